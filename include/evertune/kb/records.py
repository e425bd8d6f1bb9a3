"""Field checks and per-line record parsers of the landing-zone contract (``docs/data-format.md``).

Each ``*_line`` function turns one decoded JSON object (or, for :func:`document`, the fields of a document
file) into a normalised row, or raises :class:`Reject` carrying the quarantine reason code. The rows' columns
are the ingest output (:class:`evertune.kb.ingest.IngestResult`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any

from evertune.kb import quarantine as q
from evertune.kb.parsing import looks_binary, normalize_text

DOC_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,79}")
_QA_ID_MAX = 128


class Reject(Exception):
    """A record cannot be used; carries the quarantine reason, its detail and the doc_id when one was read."""

    def __init__(self, reason: str, detail: str, doc_id: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.doc_id = doc_id


def to_utc_iso(value: str, name: str) -> str:
    """Parse an ISO 8601 timestamp that carries an offset and return it in UTC (``+00:00``).

    Raises:
        Reject: ``invalid_timestamp`` when unparsable or without an offset.
    """
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise Reject(q.INVALID_TIMESTAMP, f"{name} {value[:60]!r} is not ISO 8601") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise Reject(q.INVALID_TIMESTAMP, f"{name} {value[:60]!r} has no UTC offset")
    return parsed.astimezone(dt.UTC).isoformat()


def string_field(record: dict[str, Any], name: str, *, required: bool, allow_empty: bool = False) -> str:
    value = record.get(name)
    if value is None:
        if required:
            raise Reject(q.MISSING_FIELD, f"required field {name!r} is missing")
        return ""
    if not isinstance(value, str):
        raise Reject(q.INVALID_FIELD, f"field {name!r} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject(q.BAD_ENCODING, f"field {name!r} holds a lone surrogate (not valid Unicode)") from None
    if looks_binary(value):
        raise Reject(q.BINARY_CONTENT, f"field {name!r} holds control characters (binary content)")
    if required and not allow_empty and not value.strip():
        raise Reject(q.MISSING_FIELD, f"required field {name!r} is empty")
    return value


def check_doc_id(value: str, name: str = "doc_id") -> str:
    if not DOC_ID_RE.fullmatch(value):
        raise Reject(q.INVALID_DOC_ID, f"{name} {value[:90]!r} does not match [a-z0-9][a-z0-9-]{{1,79}}", value)
    return value


def content_hash(title: str, text: str, source: str, url: str) -> str:
    """sha256 of the canonical JSON of title, text, source and url (the document's content key)."""
    canonical = json.dumps(
        {"source": source, "text": text, "title": title, "url": url},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def document(
    fields: dict[str, Any], text: str, fmt: str, record_ref: str, file: str, line: int | None
) -> dict[str, str]:
    doc_id = check_doc_id(string_field(fields, "doc_id", required=True))
    try:
        title = normalize_text(string_field(fields, "title", required=True)).replace("\n", " ")
        source = string_field(fields, "source", required=True).strip()
        url = string_field(fields, "url", required=True).strip()
        updated_at = to_utc_iso(string_field(fields, "updated_at", required=True), "updated_at")
        topic = string_field(fields, "topic", required=False).strip()
    except Reject as exc:
        exc.doc_id = doc_id
        raise
    metadata: dict[str, Any] = {"file": file, "format": fmt, "topic": topic}
    if line is not None:
        metadata["line"] = line
    return {
        "doc_id": doc_id,
        "title": title,
        "text": text,
        "source": source,
        "url": url,
        "updated_at": updated_at,
        "content_hash": content_hash(title, text, source, url),
        "metadata": _canonical_json(metadata),
        "record_ref": record_ref,
    }


def docs_line(record: dict[str, Any], ref: str, file: str, line: int) -> dict[str, str]:
    doc_id = check_doc_id(string_field(record, "doc_id", required=True))
    try:
        raw_text = string_field(record, "text", required=True, allow_empty=True)
    except Reject as exc:
        exc.doc_id = doc_id
        raise
    return document(record, normalize_text(raw_text), "jsonl", ref, file, line)


def tombstone_line(record: dict[str, Any], ref: str) -> dict[str, str]:
    doc_id = check_doc_id(string_field(record, "doc_id", required=True))
    try:
        deleted_at = to_utc_iso(string_field(record, "deleted_at", required=True), "deleted_at")
        reason = string_field(record, "reason", required=False)
    except Reject as exc:
        exc.doc_id = doc_id
        raise
    return {"doc_id": doc_id, "deleted_at": deleted_at, "reason": normalize_text(reason), "record_ref": ref}


def _qa_id(record: dict[str, Any], name: str) -> str:
    value = string_field(record, name, required=True).strip()
    if len(value) > _QA_ID_MAX or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise Reject(q.INVALID_FIELD, f"{name} must be at most {_QA_ID_MAX} printable characters without spaces")
    return value


def qa_line(record: dict[str, Any], ref: str) -> dict[str, str]:
    # Emptiness and the doc_id format of training pairs are checked by the validation suite, which reports them.
    doc_id = string_field(record, "doc_id", required=True, allow_empty=True).strip()
    try:
        return {
            "qa_id": _qa_id(record, "qa_id"),
            "question": normalize_text(string_field(record, "question", required=True, allow_empty=True)),
            "answer": normalize_text(string_field(record, "answer", required=True, allow_empty=True)),
            "doc_id": doc_id,
            "fact_key": string_field(record, "fact_key", required=False).strip(),
            "record_ref": ref,
        }
    except Reject as exc:
        exc.doc_id = doc_id
        raise


def golden_qa_line(record: dict[str, Any], ref: str) -> dict[str, str]:
    doc_id = check_doc_id(string_field(record, "doc_id", required=True).strip())
    try:
        return {
            "qa_id": _qa_id(record, "qa_id"),
            "question": normalize_text(string_field(record, "question", required=True)),
            "answer": normalize_text(string_field(record, "answer", required=True)),
            "doc_id": doc_id,
            "fact_key": string_field(record, "fact_key", required=False).strip(),
        }
    except Reject as exc:
        exc.doc_id = doc_id
        raise


def _interval_field(record: dict[str, Any], name: str) -> str:
    value = string_field(record, name, required=True).strip()
    try:
        if len(value) != 10:
            raise ValueError
        dt.date.fromisoformat(value)
    except ValueError:
        raise Reject(q.INVALID_FIELD, f"{name} must be a YYYY-MM-DD date, got {value[:40]!r}") from None
    return value


def golden_freshness_line(record: dict[str, Any], ref: str) -> dict[str, str]:
    """A changed-fact probe: ``probe_id, question, doc_id, old_value, new_value, changed_on`` (required),
    ``answer`` (the reference with the new value; default ``new_value``) and ``fact_key`` (optional)."""
    doc_id = check_doc_id(string_field(record, "doc_id", required=True).strip())
    try:
        old_value = normalize_text(string_field(record, "old_value", required=True))
        new_value = normalize_text(string_field(record, "new_value", required=True))
        if old_value.casefold() == new_value.casefold():
            raise Reject(q.INVALID_FIELD, "old_value and new_value are the same")
        return {
            "probe_id": _qa_id(record, "probe_id"),
            "question": normalize_text(string_field(record, "question", required=True)),
            "doc_id": doc_id,
            "fact_key": string_field(record, "fact_key", required=False).strip(),
            "old_value": old_value,
            "new_value": new_value,
            "answer": normalize_text(string_field(record, "answer", required=False)) or new_value,
            "changed_on": _interval_field(record, "changed_on"),
        }
    except Reject as exc:
        exc.doc_id = doc_id
        raise


def golden_retrieval_line(record: dict[str, Any], ref: str) -> dict[str, Any]:
    query_id = _qa_id(record, "query_id")
    query = normalize_text(string_field(record, "query", required=True))
    relevant = record.get("relevant_doc_ids")
    if relevant is None:
        raise Reject(q.MISSING_FIELD, "required field 'relevant_doc_ids' is missing")
    if not isinstance(relevant, list) or not relevant or not all(isinstance(d, str) for d in relevant):
        raise Reject(q.INVALID_FIELD, "relevant_doc_ids must be a non-empty list of strings")
    for doc_id in relevant:
        check_doc_id(doc_id, "relevant doc_id")
    return {"query_id": query_id, "query": query, "relevant_doc_ids": sorted(set(relevant))}


def decode_bytes(data: bytes) -> str:
    if b"\x00" in data:
        raise Reject(q.BINARY_CONTENT, "contains NUL bytes (binary content)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Reject(q.BAD_ENCODING, f"not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    if looks_binary(text):
        raise Reject(q.BINARY_CONTENT, "more than 1% control characters (binary content)")
    return text


def reject_json_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")

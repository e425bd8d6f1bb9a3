"""Quarantine records: rows set aside, with a machine-readable reason, instead of failing the run.

The reason codes are the contract documented in ``docs/data-format.md``; reports count per code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

#: Columns of ``quarantine.parquet``, in file order.
QUARANTINE_COLUMNS: tuple[str, ...] = ("interval", "record_ref", "doc_id", "stage", "reason", "detail")

# Ingest-stage reasons: the input could not be read into a record.
BAD_ENCODING = "bad_encoding"
BINARY_CONTENT = "binary_content"
EMPTY_FILE = "empty_file"
OVERSIZED = "oversized"
UNSAFE_PATH = "unsafe_path"
UNREADABLE_FILE = "unreadable_file"
UNEXPECTED_FILE = "unexpected_file"
MALFORMED_JSON = "malformed_json"
MALFORMED_HTML = "malformed_html"
MISSING_FIELD = "missing_field"
INVALID_FIELD = "invalid_field"
INVALID_DOC_ID = "invalid_doc_id"
INVALID_TIMESTAMP = "invalid_timestamp"

# Validate-stage reasons: the record was read but fails an expectation.
EMPTY_TEXT = "empty_text"
TEXT_TOO_SHORT = "text_too_short"
TEXT_TOO_LONG = "text_too_long"
GARBAGE_TEXT = "garbage_text"
DISALLOWED_SOURCE = "disallowed_source"
DISALLOWED_URL = "disallowed_url"
DUPLICATE_DOC_ID = "duplicate_doc_id"
DUPLICATE_QA_ID = "duplicate_qa_id"
PII_DETECTED = "pii_detected"
PROMPT_INJECTION = "prompt_injection"
# Feedback only (evertune.kb.feedback): a correction the cited article does not back, or no article to check.
CORRECTION_NOT_GROUNDED = "correction_not_grounded"
CITED_SOURCE_MISSING = "cited_source_missing"

INGEST_REASONS: frozenset[str] = frozenset(
    {
        BAD_ENCODING, BINARY_CONTENT, EMPTY_FILE, OVERSIZED, UNSAFE_PATH, UNREADABLE_FILE, UNEXPECTED_FILE,
        MALFORMED_JSON, MALFORMED_HTML, MISSING_FIELD, INVALID_FIELD, INVALID_DOC_ID, INVALID_TIMESTAMP,
    }
)  # fmt: skip
VALIDATE_REASONS: frozenset[str] = frozenset(
    {
        EMPTY_TEXT, TEXT_TOO_SHORT, TEXT_TOO_LONG, GARBAGE_TEXT, DISALLOWED_SOURCE, DISALLOWED_URL,
        DUPLICATE_DOC_ID, DUPLICATE_QA_ID, PII_DETECTED, PROMPT_INJECTION, INVALID_DOC_ID,
        CORRECTION_NOT_GROUNDED, CITED_SOURCE_MISSING,
    }
)  # fmt: skip

Stage = Literal["ingest", "validate"]


@dataclass(frozen=True, order=True)
class QuarantineRecord:
    """One input record set aside. Field order is the sort order and the file's column order."""

    interval: str
    record_ref: str
    doc_id: str
    stage: Stage
    reason: str
    detail: str

    def __post_init__(self) -> None:
        allowed = INGEST_REASONS if self.stage == "ingest" else VALIDATE_REASONS
        if self.reason not in allowed:
            raise ValueError(f"unknown {self.stage} quarantine reason {self.reason!r}")

    def to_dict(self) -> dict[str, str]:
        """Return the record as a plain row."""
        return asdict(self)


def quarantine_frame(records: list[QuarantineRecord] | list[dict[str, str]]):  # -> pandas.DataFrame
    """Build a sorted quarantine DataFrame with the fixed columns (empty input gives an empty frame).

    Args:
        records: Records or plain rows with the :data:`QUARANTINE_COLUMNS` keys.

    Returns:
        A ``pandas.DataFrame`` of strings sorted by (record_ref, stage, reason, doc_id, detail).
    """
    import pandas as pd

    rows = [
        r.to_dict() if isinstance(r, QuarantineRecord) else {c: str(r[c]) for c in QUARANTINE_COLUMNS} for r in records
    ]
    rows.sort(key=lambda row: (row["record_ref"], row["stage"], row["reason"], row["doc_id"], row["detail"]))
    return pd.DataFrame({col: pd.Series([row[col] for row in rows], dtype="str") for col in QUARANTINE_COLUMNS})


def count_by_reason(frame) -> dict[str, int]:
    """Count quarantine rows per reason code, keys sorted.

    Args:
        frame: A quarantine DataFrame.

    Returns:
        ``{reason: count}``.
    """
    counts = frame["reason"].value_counts() if len(frame) else {}
    return {str(reason): int(counts[reason]) for reason in sorted(counts.keys())}

"""The validated-snapshot contract: what ``validated/ds=<interval>/`` holds, and the one way to read and write it.

This module is the only place that names the files of a validated folder. It fixes their columns and Arrow
schemas (every column a non-null string, except ``documents.updated_at`` and ``tombstones.deleted_at``, which
are ``timestamp[us, tz=UTC]``), writes them byte-deterministically (same rows -> same bytes -> same DVC md5)
and reads them back. The ingest step stages its output in the same layout (see :mod:`evertune.kb.staging`).

Which version of a document wins across folders is :func:`evertune.data.doc_state.resolve_doc_state`.

Files, by key (:data:`FILES`)::

    documents         documents.parquet        DOC_COLUMNS, sorted by (doc_id, record_ref)
    tombstones        tombstones.parquet       TOMBSTONE_COLUMNS, sorted by (doc_id, deleted_at, record_ref)
    qa                qa.parquet               QA_COLUMNS, sorted by (qa_id, record_ref)
    quarantine        quarantine.parquet       QUARANTINE_COLUMNS, sorted by (record_ref, stage, reason, ...)
    golden_retrieval  golden_retrieval.jsonl   sorted by (query_id, query), keys sorted
    golden_qa         golden_qa.jsonl          sorted by (qa_id, question), keys sorted
    golden_freshness  golden_freshness.jsonl   sorted by (probe_id, question), keys sorted
    report            report.json              sorted keys, indented
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import CriticalValidationError
from evertune.kb.quarantine import QUARANTINE_COLUMNS

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

DOCUMENTS = "documents"
TOMBSTONES = "tombstones"
QA = "qa"
QUARANTINE = "quarantine"
GOLDEN_RETRIEVAL = "golden_retrieval"
GOLDEN_QA = "golden_qa"
GOLDEN_FRESHNESS = "golden_freshness"
REPORT = "report"

#: The files of a validated folder, by key.
FILES: dict[str, str] = {
    DOCUMENTS: "documents.parquet",
    TOMBSTONES: "tombstones.parquet",
    QA: "qa.parquet",
    QUARANTINE: "quarantine.parquet",
    GOLDEN_RETRIEVAL: "golden_retrieval.jsonl",
    GOLDEN_QA: "golden_qa.jsonl",
    GOLDEN_FRESHNESS: "golden_freshness.jsonl",
    REPORT: "report.json",
}

#: The keys that hold rows (every file but the report), named like the fields of the results that carry them.
CONTENT_KEYS: tuple[str, ...] = (
    DOCUMENTS, TOMBSTONES, QA, QUARANTINE, GOLDEN_RETRIEVAL, GOLDEN_QA, GOLDEN_FRESHNESS,
)  # fmt: skip

#: Files a validated folder written before they existed may lack (read as empty).
OPTIONAL: frozenset[str] = frozenset({GOLDEN_FRESHNESS})

#: Columns of the normalised document record, in file order.
DOC_COLUMNS: tuple[str, ...] = (
    "doc_id", "title", "text", "source", "url", "updated_at", "content_hash", "metadata", "record_ref",
)  # fmt: skip
TOMBSTONE_COLUMNS: tuple[str, ...] = ("doc_id", "deleted_at", "reason", "record_ref")
QA_COLUMNS: tuple[str, ...] = ("qa_id", "question", "answer", "doc_id", "fact_key", "record_ref")

#: Columns of each Parquet table, in file order.
COLUMNS: dict[str, tuple[str, ...]] = {
    DOCUMENTS: DOC_COLUMNS,
    TOMBSTONES: TOMBSTONE_COLUMNS,
    QA: QA_COLUMNS,
    QUARANTINE: QUARANTINE_COLUMNS,
}
#: The timestamp column of a table (``timestamp[us, tz=UTC]``); every other column is a string.
TIMESTAMP_COLUMNS: dict[str, str] = {DOCUMENTS: "updated_at", TOMBSTONES: "deleted_at"}
#: Row order of every file (what makes the bytes independent of the input order).
SORT_KEYS: dict[str, tuple[str, ...]] = {
    DOCUMENTS: ("doc_id", "record_ref"),
    TOMBSTONES: ("doc_id", "deleted_at", "record_ref"),
    QA: ("qa_id", "record_ref"),
    QUARANTINE: ("record_ref", "stage", "reason", "doc_id", "detail"),
    GOLDEN_RETRIEVAL: ("query_id", "query"),
    GOLDEN_QA: ("qa_id", "question"),
    GOLDEN_FRESHNESS: ("probe_id", "question"),
}
_PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd", "compression_level": 3, "use_dictionary": True, "write_statistics": True,
    "version": "2.6", "data_page_version": "1.0", "row_group_size": 64 * 1024,
}  # fmt: skip


def path_of(folder: str | Path, key: str) -> Path:
    """The path of one file of a validated (or staged) folder, e.g. ``path_of(folder, GOLDEN_QA)``."""
    return Path(folder) / FILES[key]


# --------------------------------------------------------------------------- timestamps


def parse_timestamp(value: Any, *, what: str = "timestamp") -> dt.datetime:
    """The one timestamp parser of the snapshot: ISO 8601 text or a datetime, as an aware UTC datetime.

    A value without an offset is taken as UTC (the validated format is UTC).

    Args:
        value: A ``datetime`` or ISO 8601 text (a trailing ``Z`` is accepted).
        what: Names the value in the error message.

    Raises:
        CriticalValidationError: The value is not a timestamp.
    """
    if isinstance(value, dt.datetime):
        moment = value
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise CriticalValidationError(f"{what}: not an ISO 8601 timestamp: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def iso_utc(value: Any) -> str:
    """A timestamp as ISO 8601 text in UTC (``2026-11-03T08:00:00+00:00``), the form ingestion produces."""
    return parse_timestamp(value).isoformat()


# --------------------------------------------------------------------------- schemas and tables


@functools.cache
def schema(key: str) -> pa.Schema:
    """The Arrow schema of one table (:data:`COLUMNS`); all fields are non-null."""
    import pyarrow as pa

    stamp = TIMESTAMP_COLUMNS.get(key)
    return pa.schema([
        pa.field(col, pa.timestamp("us", tz="UTC") if col == stamp else pa.string(), nullable=False)
        for col in COLUMNS[key]
    ])  # fmt: skip


def _column_values(data: Any, column: str) -> list[Any]:
    if hasattr(data, "column_names"):  # pyarrow.Table
        return data.column(column).to_pylist()
    if hasattr(data, "columns") and hasattr(data, "__getitem__") and not isinstance(data, Sequence):  # DataFrame
        return data[column].tolist() if len(data) else []
    return [row[column] for row in data]


def to_table(key: str, data: Any) -> pa.Table:
    """Build the typed table of ``key`` from rows, a DataFrame or an Arrow table (in the given order).

    String columns are converted with ``str``; the timestamp column is parsed with :func:`parse_timestamp`.

    Raises:
        CriticalValidationError: A timestamp is invalid.
        KeyError: A column is missing.
    """
    import pyarrow as pa

    target = schema(key)
    arrays = []
    for field in target:
        values = _column_values(data, field.name)
        if pa.types.is_timestamp(field.type):
            values = [parse_timestamp(v, what=f"{FILES[key]} {field.name}") for v in values]
        else:
            values = [str(v) for v in values]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=target)


def _sorted(key: str, table: pa.Table) -> pa.Table:
    return table.sort_by([(col, "ascending") for col in SORT_KEYS[key]]) if table.num_rows else table


def text_rows(table: pa.Table, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of ``columns`` as text (timestamps as :func:`iso_utc`), e.g. to rebuild an all-string DataFrame."""
    import pyarrow as pa

    values = []
    for col in columns:
        column = table.column(col)
        raw = column.to_pylist()
        values.append([iso_utc(v) for v in raw] if pa.types.is_timestamp(column.type) else [str(v) for v in raw])
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)] if table.num_rows else []


def text_frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """An all-string DataFrame of ``columns`` from text rows (the in-memory form of the ingest and validate steps)."""
    import pandas as pd

    return pd.DataFrame({col: pd.Series([row[col] for row in rows], dtype="str") for col in columns})


def read_text_frame(folder: str | Path, key: str) -> pd.DataFrame:
    """One table of a folder as an all-string DataFrame of the contract's columns (timestamps as :func:`iso_utc`).

    Raises:
        CriticalValidationError: See :func:`read_table`.
    """
    return text_frame(text_rows(read_table(folder, key), COLUMNS[key]), COLUMNS[key])


def contents_of(holder: Any) -> dict[str, Any]:
    """``{key: holder.<key>}`` for :data:`CONTENT_KEYS`: the rows of an ingest or validation result (to write)."""
    return {key: getattr(holder, key) for key in CONTENT_KEYS}


def read_contents(folder: str | Path) -> dict[str, Any]:
    """Every table (as :func:`read_text_frame`) and golden file (as :func:`read_records`) of a folder, by key.

    Raises:
        CriticalValidationError: A file or a column is missing, or a line or timestamp is invalid.
    """
    return {
        key: read_text_frame(folder, key) if key in COLUMNS else read_records(folder, key, missing_ok=key in OPTIONAL)
        for key in CONTENT_KEYS
    }


# --------------------------------------------------------------------------- write


def _parquet_bytes(table: pa.Table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    # Fixed writer settings (and no pandas metadata) so equal rows give equal bytes.
    pq.write_table(table, sink, **_PARQUET_OPTIONS)
    return sink.getvalue().to_pybytes()


def _jsonl_bytes(rows: Iterable[Mapping[str, Any]]) -> bytes:
    lines = (json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) for row in rows)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def encode(key: str, data: Any, *, sort: bool = True) -> bytes:
    """The bytes of one file: Parquet for tables, JSON lines for golden records, indented JSON for the report.

    Args:
        key: A key of :data:`FILES`.
        data: Rows, a DataFrame or an Arrow table (tables); a list of dicts (golden records); a dict (report).
        sort: Sort rows by :data:`SORT_KEYS` (the validated layout); ``False`` keeps the given order.
    """
    if key in COLUMNS:
        table = to_table(key, data)
        return _parquet_bytes(_sorted(key, table) if sort else table)
    if key == REPORT:
        return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    rows = list(data)
    if sort:
        rows.sort(key=lambda row: tuple(str(row.get(col, "")) for col in SORT_KEYS[key]))
    return _jsonl_bytes(rows)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write(folder: str | Path, contents: Mapping[str, Any], *, sort: bool = True) -> dict[str, str]:
    """Write files of a validated folder, each replaced atomically, byte-deterministically.

    Args:
        folder: Target folder (created if missing).
        contents: ``{key: data}`` for some keys of :data:`FILES` (see :func:`encode`).
        sort: See :func:`encode`.

    Returns:
        ``{key: path}`` of the files written.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for key in FILES:
        if key in contents:
            path = path_of(out, key)
            _write_atomic(path, encode(key, contents[key], sort=sort))
            paths[key] = str(path)
    return paths


# --------------------------------------------------------------------------- read


def _typed(key: str, table: pa.Table) -> pa.Table:
    """Cast the timestamp column of a stored table to ``timestamp[us, UTC]`` (older files store it as text)."""
    import pyarrow as pa

    column = TIMESTAMP_COLUMNS.get(key)
    if column is None or column not in table.column_names:
        return table
    target = pa.timestamp("us", tz="UTC")
    values = table.column(column)
    if values.type != target:
        parsed = [parse_timestamp(v, what=f"{FILES[key]} {column}") for v in values.to_pylist()]
        index = table.column_names.index(column)
        table = table.set_column(index, pa.field(column, target, nullable=False), pa.array(parsed, type=target))
    return table


def read_table(
    folder: str | Path, key: str, *, require: Sequence[str] | None = None, missing_ok: bool = False
) -> pa.Table:
    """Read one Parquet table of a validated folder, its timestamp column typed.

    Columns beyond the contract's are kept (readers pick what they need).

    Args:
        folder: The validated folder.
        key: ``documents``, ``tombstones``, ``qa`` or ``quarantine``.
        require: Columns that must be present; default all of :data:`COLUMNS` ``[key]``.
        missing_ok: A missing file reads as an empty table of the contract's schema.

    Raises:
        CriticalValidationError: The file (unless ``missing_ok``) or a required column is missing, or a
            timestamp is invalid.
    """
    import pyarrow.parquet as pq

    path = path_of(folder, key)
    if not path.is_file():
        if missing_ok:
            return schema(key).empty_table()
        raise CriticalValidationError(f"validated folder lacks {path.name}: {path}", {"path": str(path)})
    table = pq.read_table(path)
    missing = [col for col in (COLUMNS[key] if require is None else require) if col not in table.column_names]
    if missing:
        raise CriticalValidationError(f"{path} lacks required column(s) {missing}", {"path": str(path)})
    return _typed(key, table)


def read_rows(
    folder: str | Path, key: str, *, require: Sequence[str] | None = None, missing_ok: bool = False
) -> list[dict[str, Any]]:
    """:func:`read_table` as a list of dicts (timestamps as aware UTC datetimes)."""
    return read_table(folder, key, require=require, missing_ok=missing_ok).to_pylist()


def read_records(folder: str | Path, key: str, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """Read a JSON-lines file (``golden_retrieval``, ``golden_qa`` or ``golden_freshness``); blank lines are skipped.

    Raises:
        CriticalValidationError: The file is missing (unless ``missing_ok``) or a line is not valid JSON.
    """
    path = path_of(folder, key)
    if not path.is_file():
        if missing_ok:
            return []
        raise CriticalValidationError(f"validated folder lacks {path.name}: {path}", {"path": str(path)})
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            raise CriticalValidationError(f"{path}:{number} is not valid JSON: {exc}", {"path": str(path)}) from None
    return records


def read_report(folder: str | Path) -> dict[str, Any]:
    """Read ``report.json``.

    Raises:
        CriticalValidationError: The file is missing.
    """
    path = path_of(folder, REPORT)
    if not path.is_file():
        raise CriticalValidationError(f"validated folder lacks {path.name}: {path}", {"path": str(path)})
    return json.loads(path.read_text(encoding="utf-8"))

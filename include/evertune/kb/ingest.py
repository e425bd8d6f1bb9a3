"""Ingest one landing-zone partition into normalised records (step 1 of the nightly refresh).

The input contract is ``docs/data-format.md``. Reading never crashes on bad input: every file or line that
cannot become a record is turned into a quarantine record with a reason code. Output is deterministic for the
same partition content (sorted rows, no clock values), so re-runs produce the same data version.

This module lists and reads the partition; the text parsers live in :mod:`evertune.kb.parsing` and the field
checks and per-line record parsers in :mod:`evertune.kb.records`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evertune.data.snapshot import DOC_COLUMNS, QA_COLUMNS, TOMBSTONE_COLUMNS
from evertune.errors import ConfigError, TransientError
from evertune.kb import golden
from evertune.kb import quarantine as q
from evertune.kb.parsing import html_to_text, markdown_to_text, normalize_text, parse_front_matter
from evertune.kb.quarantine import QuarantineRecord
from evertune.kb.records import (
    Reject,
    decode_bytes,
    docs_line,
    document,
    qa_line,
    reject_json_constant,
    tombstone_line,
)

if TYPE_CHECKING:
    import pandas as pd

    from evertune.config import Params

_INTERVAL_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CHUNK = 1 << 16

_DOC_FIELDS = ("doc_id", "title", "text", "source", "url", "updated_at")
_DOC_FILE_FORMATS = {".md": "md", ".markdown": "md", ".txt": "txt", ".html": "html", ".htm": "html"}
_MANIFEST = "_manifest.json"


@dataclass
class IngestResult:
    """Everything read from one partition.

    Attributes:
        interval: The data interval date ``YYYY-MM-DD``.
        partition_found: False when ``<landing>/ds=<interval>/`` does not exist (not an error here).
        documents: One row per readable document (``snapshot.DOC_COLUMNS``, all strings), sorted by
            (doc_id, record_ref).
        tombstones: Deletions (``snapshot.TOMBSTONE_COLUMNS``), sorted by (doc_id, record_ref).
        qa: Training QA pairs (``snapshot.QA_COLUMNS``), sorted by (qa_id, record_ref).
        quarantine: Ingest-stage quarantine rows (``quarantine.QUARANTINE_COLUMNS``).
        golden_retrieval: Lines of the golden retrieval drop (:func:`evertune.kb.golden.retrieval_line`: items,
            with ``"draft": true`` when set, and retire lines), sorted by (query_id, query, line).
        golden_qa: Lines of the golden QA drop (never trained on; items and retire lines), sorted by
            (qa_id, question, line).
        golden_freshness: Lines of the changed-fact probe drop (:func:`evertune.kb.golden.freshness_line`),
            sorted by (probe_id, question, line).
        records_read: Input records seen: one per file plus one per non-blank JSONL line (the denominator of
            the quarantined share).
        files_read: Files looked at (the manifest excluded).
    """

    interval: str
    partition_found: bool
    documents: pd.DataFrame
    tombstones: pd.DataFrame
    qa: pd.DataFrame
    quarantine: pd.DataFrame
    golden_retrieval: list[dict[str, Any]] = field(default_factory=list)
    golden_qa: list[dict[str, Any]] = field(default_factory=list)
    golden_freshness: list[dict[str, Any]] = field(default_factory=list)
    records_read: int = 0
    files_read: int = 0




# --------------------------------------------------------------------------- listing and reading


@dataclass
class _Entry:
    rel: str  # path relative to the partition, "/"-separated
    path: str  # full path for the filesystem
    size: int | None
    problem: str | None = None  # an unsafe_path / unreadable_file detail, when the entry must not be read
    problem_reason: str = q.UNSAFE_PATH


def _printable_ref(rel: str) -> str:
    # record_ref ends up in parquet and logs: escape anything non-printable (incl. undecodable name bytes).
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in rel)


def _unsafe_name(rel: str) -> str | None:
    if rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        return "absolute path"
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            return f"path segment {part!r} (path trick)"
        if "\\" in part or "\x00" in part or any(not ch.isprintable() for ch in part):
            return "name holds a backslash or a control character"
    return None


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _walk_local(root: str) -> Iterator[_Entry]:
    """List a local partition without following links; links are checked with realpath."""
    real_root = os.path.realpath(root)

    def inside(path: str) -> bool:
        return path == real_root or path.startswith(real_root + os.sep)

    def scan(folder: str, prefix: str) -> Iterator[_Entry]:
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = f"{prefix}{entry.name}"
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not inside(target):
                        yield _Entry(rel, entry.path, None, "symbolic link leads outside the partition")
                    elif os.path.isdir(target):
                        yield _Entry(rel, entry.path, None, "links to folders are not followed")
                    elif os.path.isfile(target):
                        yield _Entry(rel, target, os.path.getsize(target))
                    else:
                        yield _Entry(rel, entry.path, None, "broken or special link")
                elif entry.is_dir(follow_symlinks=False):
                    yield from scan(entry.path, rel + "/")
                elif entry.is_file(follow_symlinks=False):
                    yield _Entry(rel, entry.path, entry.stat(follow_symlinks=False).st_size)
                else:
                    yield _Entry(rel, entry.path, None, "not a regular file (device, pipe or socket)")

    yield from scan(root, "")


def _walk_fsspec(fs: Any, root: str) -> Iterator[_Entry]:
    found = fs.find(root, detail=True, withdirs=False)
    prefix = root.rstrip("/") + "/"
    for path in sorted(found):
        info = found[path]
        name = str(info.get("name", path))
        rel = name.removeprefix(prefix)
        size = info.get("size")
        yield _Entry(rel, name, int(size) if size is not None else None)


def _read_bounded(fs: Any, path: str, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes (so an understated size can still be caught)."""
    with fs.open(path, "rb") as handle:
        return handle.read(limit + 1)


def _iter_lines(fs: Any, path: str, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, raw bytes) per line, streaming; ``None`` for a line longer than ``limit`` bytes."""
    with fs.open(path, "rb") as handle:
        number, buffer, too_long = 1, b"", False
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            pieces = chunk.split(b"\n")
            for piece in pieces[:-1]:
                yield number, (None if too_long or len(buffer) + len(piece) > limit else buffer + piece)
                number, buffer, too_long = number + 1, b"", False
            if not too_long:
                buffer += pieces[-1]
                if len(buffer) > limit:
                    buffer, too_long = b"", True
        if buffer or too_long:
            yield number, (None if too_long else buffer)



# --------------------------------------------------------------------------- the reader


class _PartitionReader:
    def __init__(self, fs: Any, root: str, interval: str, params: Params) -> None:
        self.fs = fs
        self.root = root
        self.interval = interval
        self.max_bytes = params.ingest.max_file_bytes
        self.formats = set(params.ingest.formats)
        self.documents: list[dict[str, str]] = []
        self.tombstones: list[dict[str, str]] = []
        self.qa: list[dict[str, str]] = []
        self.golden_retrieval: list[dict[str, Any]] = []
        self.golden_qa: list[dict[str, Any]] = []
        self.golden_freshness: list[dict[str, Any]] = []
        self.quarantine: list[QuarantineRecord] = []
        self.records_read = 0
        self.files_read = 0

    def reject(self, ref: str, reason: str, detail: str, doc_id: str = "") -> None:
        doc_id = doc_id if isinstance(doc_id, str) else ""
        self.quarantine.append(
            QuarantineRecord(self.interval, ref, _printable_ref(doc_id[:120]), "ingest", reason, detail)
        )

    def run(self, entries: Iterator[_Entry]) -> None:
        for entry in entries:
            if entry.rel == _MANIFEST:
                continue  # what the demo generator intended; the pipeline never reads it
            self.files_read += 1
            ref = _printable_ref(entry.rel)
            problem = entry.problem or _unsafe_name(entry.rel)
            if problem:
                self.records_read += 1
                self.reject(ref, entry.problem_reason if entry.problem else q.UNSAFE_PATH, problem)
                continue
            self.read_entry(entry, ref)

    def read_entry(self, entry: _Entry, ref: str) -> None:
        jsonl_handlers = {
            "docs.jsonl": docs_line if "jsonl" in self.formats else None,
            "tombstones.jsonl": tombstone_line,
            "qa.jsonl": qa_line,
            golden.RETRIEVAL.landing_path: golden.retrieval_line,
            golden.QA.landing_path: golden.qa_line,
            golden.FRESHNESS.landing_path: golden.freshness_line,
        }
        suffix = posixpath.splitext(entry.rel)[1].lower()
        if entry.rel in jsonl_handlers and jsonl_handlers[entry.rel] is not None:
            self.read_jsonl(entry, ref, jsonl_handlers[entry.rel])
        elif entry.rel.startswith("docs/") and _DOC_FILE_FORMATS.get(suffix) in self.formats:
            self.records_read += 1
            try:
                self.documents.append(self.read_document(entry, ref, _DOC_FILE_FORMATS[suffix]))
            except Reject as exc:
                self.reject(ref, exc.reason, exc.detail, exc.doc_id)
        else:
            self.records_read += 1
            known = _DOC_FILE_FORMATS.get(suffix) or ("jsonl" if entry.rel == "docs.jsonl" else None)
            why = (
                f"format {known!r} is disabled by ingest.formats"
                if known and entry.rel.startswith(("docs/", "docs.jsonl"))
                else "not part of the landing-zone layout (see docs/data-format.md)"
            )
            self.reject(ref, q.UNEXPECTED_FILE, why)

    def classify_os_error(self, exc: OSError, ref: str) -> Reject:
        # Permission problems are a property of the file; anything else (network, vanished file) may be transient.
        if isinstance(exc, (PermissionError, IsADirectoryError)):
            return Reject(q.UNREADABLE_FILE, f"cannot read the file: {type(exc).__name__}")
        raise TransientError(f"reading {ref} from the landing zone failed: {exc}") from exc

    def read_document(self, entry: _Entry, ref: str, fmt: str) -> dict[str, str]:
        if entry.size is not None and entry.size > self.max_bytes:
            raise Reject(q.OVERSIZED, f"file is {entry.size} bytes, ingest.max_file_bytes is {self.max_bytes}")
        try:
            data = _read_bounded(self.fs, entry.path, self.max_bytes)
        except OSError as exc:
            raise self.classify_os_error(exc, ref) from None
        if len(data) > self.max_bytes:
            raise Reject(q.OVERSIZED, f"file is larger than ingest.max_file_bytes ({self.max_bytes})")
        if not data.strip():
            raise Reject(q.EMPTY_FILE, "file is empty" if not data else "file holds only whitespace")
        raw = decode_bytes(data)
        if fmt == "html":
            try:
                text, title, fields = html_to_text(raw)
            except ValueError as exc:
                raise Reject(q.MALFORMED_HTML, f"cannot parse HTML: {str(exc)[:120]}") from None
            fields = dict(fields)
            if title:
                fields["title"] = title
        else:
            try:
                fields, body = parse_front_matter(raw)
            except ValueError as exc:
                raise Reject(q.MISSING_FIELD, str(exc)) from None
            text = markdown_to_text(body) if fmt == "md" else normalize_text(body)
        return document(fields, text, fmt, ref, entry.rel, None)

    def read_jsonl(self, entry: _Entry, ref: str, handler: Any) -> None:
        target = {
            docs_line: self.documents,
            tombstone_line: self.tombstones,
            qa_line: self.qa,
            golden.retrieval_line: self.golden_retrieval,
            golden.qa_line: self.golden_qa,
            golden.freshness_line: self.golden_freshness,
        }[handler]
        try:
            for number, raw in _iter_lines(self.fs, entry.path, self.max_bytes):
                if raw is not None and not raw.strip():
                    continue  # blank lines (a trailing newline) are not records
                self.records_read += 1
                line_ref = f"{ref}:{number}"
                try:
                    record = self.parse_json_line(raw)
                    if handler is docs_line:
                        target.append(handler(record, line_ref, entry.rel, number))
                    else:
                        target.append(handler(record, line_ref))
                except Reject as exc:
                    self.reject(line_ref, exc.reason, exc.detail, exc.doc_id)
        except OSError as exc:
            reject = self.classify_os_error(exc, ref)  # raises TransientError unless it is about the file itself
            self.records_read += 1
            self.reject(ref, reject.reason, reject.detail)

    def parse_json_line(self, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            raise Reject(q.OVERSIZED, f"line is longer than ingest.max_file_bytes ({self.max_bytes})")
        try:
            record = json.loads(decode_bytes(raw), parse_constant=reject_json_constant)
        except json.JSONDecodeError as exc:
            raise Reject(q.MALFORMED_JSON, f"invalid JSON: {exc.msg} at column {exc.colno}") from None
        except (ValueError, RecursionError) as exc:
            raise Reject(q.MALFORMED_JSON, f"invalid JSON: {str(exc)[:120]}") from None
        if not isinstance(record, dict):
            raise Reject(q.MALFORMED_JSON, f"line is a JSON {type(record).__name__}, not an object")
        return record


def _frame(rows: list[dict[str, str]], columns: tuple[str, ...]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({col: pd.Series([row[col] for row in rows], dtype="str") for col in columns})


def _golden_order(kind: golden.GoldenKind, text_field: str) -> Any:
    """Sort key of golden lines: id, text (``""`` on a retire line), then the canonical line (order-free bytes)."""

    def key(row: dict[str, Any]) -> tuple[str, str, bytes]:
        return (row[kind.id_field], str(row.get(text_field, "")), golden.canonical_jsonl([row]))

    return key


def check_interval(interval: str) -> str:
    """Return ``interval`` if it is a ``YYYY-MM-DD`` date.

    Raises:
        ConfigError: It is not.
    """
    try:
        if not _INTERVAL_RE.fullmatch(interval):
            raise ValueError
        dt.date.fromisoformat(interval)
    except (TypeError, ValueError):
        raise ConfigError(f"interval must be a YYYY-MM-DD date, got {interval!r}") from None
    return interval


def partition_uri(landing_uri: str, interval: str) -> str:
    """The URI of one day's partition: ``<landing_uri>/ds=<interval>``."""
    return f"{landing_uri.rstrip('/')}/ds={check_interval(interval)}"


def ingest_partition(landing_uri: str, interval: str, params: Params) -> IngestResult:
    """Read ``<landing_uri>/ds=<interval>/`` into normalised, sorted records plus quarantine rows.

    Args:
        landing_uri: The landing zone: a local folder or any fsspec URL (``memory://``, ``s3://``...).
        interval: The data interval date ``YYYY-MM-DD``.
        params: Pipeline params (``params.ingest``).

    Returns:
        The :class:`IngestResult`; ``partition_found`` is False (and everything empty) when the partition
        does not exist: whether that is fatal is the validator's decision.

    Raises:
        ConfigError: ``interval`` is not a date.
        TransientError: The landing zone could not be listed or a file could not be read for a reason that
            may go away (network, a file vanishing mid-run).
    """
    import fsspec

    from evertune.kb.quarantine import quarantine_frame

    check_interval(interval)
    fs, landing = fsspec.core.url_to_fs(landing_uri)
    root = f"{landing.rstrip('/')}/ds={interval}"
    reader = _PartitionReader(fs, root, interval, params)
    try:
        found = fs.isdir(root)
        if found:
            reader.run(_walk_local(root) if _is_local(fs) else _walk_fsspec(fs, root))
    except (FileNotFoundError, NotADirectoryError):
        found = False
    except OSError as exc:
        raise TransientError(f"cannot list landing partition {landing_uri.rstrip('/')}/ds={interval}: {exc}") from exc

    reader.documents.sort(key=lambda r: (r["doc_id"], r["record_ref"]))
    reader.tombstones.sort(key=lambda r: (r["doc_id"], r["record_ref"]))
    reader.qa.sort(key=lambda r: (r["qa_id"], r["record_ref"]))
    reader.golden_retrieval.sort(key=_golden_order(golden.RETRIEVAL, "query"))
    reader.golden_qa.sort(key=_golden_order(golden.QA, "question"))
    reader.golden_freshness.sort(key=_golden_order(golden.FRESHNESS, "question"))
    return IngestResult(
        interval=interval,
        partition_found=found,
        documents=_frame(reader.documents, DOC_COLUMNS),
        tombstones=_frame(reader.tombstones, TOMBSTONE_COLUMNS),
        qa=_frame(reader.qa, QA_COLUMNS),
        golden_retrieval=reader.golden_retrieval,
        golden_qa=reader.golden_qa,
        golden_freshness=reader.golden_freshness,
        quarantine=quarantine_frame(reader.quarantine),
        records_read=reader.records_read,
        files_read=reader.files_read,
    )

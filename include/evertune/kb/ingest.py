"""Ingest one landing-zone partition into normalised records (step 1 of the nightly refresh).

The input contract is ``docs/data-format.md``. Reading never crashes on bad input: every file or line that
cannot become a record is turned into a quarantine record with a reason code. Output is deterministic for the
same partition content (sorted rows, no clock values), so re-runs produce the same data version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import posixpath
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

from evertune.data.snapshot import DOC_COLUMNS, QA_COLUMNS, TOMBSTONE_COLUMNS
from evertune.errors import ConfigError, TransientError
from evertune.kb import quarantine as q
from evertune.kb.quarantine import QuarantineRecord

if TYPE_CHECKING:
    import pandas as pd

    from evertune.config import Params

DOC_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,79}")
_INTERVAL_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_QA_ID_MAX = 128
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
        golden_retrieval: Golden retrieval queries, sorted by query_id.
        golden_qa: Golden QA pairs (never trained on), sorted by qa_id.
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
    records_read: int = 0
    files_read: int = 0


class _Reject(Exception):
    """Internal: a record cannot be used; carries the quarantine reason."""

    def __init__(self, reason: str, detail: str, doc_id: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.doc_id = doc_id


# --------------------------------------------------------------------------- text normalisation

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES_RE = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_BLANKS_RE = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """Normalise text to NFC plain text: single spaces, stripped lines, at most one blank line between paragraphs.

    Args:
        text: Any decoded text.

    Returns:
        The normalised text (paragraphs separated by ``"\\n\\n"``).
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_RE.sub(" ", text.replace("\u2028", "\n").replace("\u2029", "\n\n"))
    lines = [_SPACES_RE.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS_RE.sub("\n\n", "\n".join(lines)).strip()


def _looks_binary(text: str) -> bool:
    # Decoded text that is more than 1 % control characters is binary residue, not prose.
    if "\x00" in text:
        return True
    controls = len(_CONTROL_RE.findall(text))
    return controls > max(1, len(text) // 100)


_MD_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[^\n]*$", re.MULTILINE), ""),  # code fences (the code itself stays)
    (re.compile(r"^[ \t]{0,3}#{1,6}[ \t]*([^\n]*?)[ \t]*#*[ \t]*$", re.MULTILINE), r"\1"),  # ATX headings
    (re.compile(r"^[ \t]{0,3}([-*_])([ \t]*\1){2,}[ \t]*$", re.MULTILINE), ""),  # horizontal rules
    (re.compile(r"^[ \t]{0,3}>[ \t]?", re.MULTILINE), ""),  # block quotes
    (re.compile(r"^([ \t]*)[*+][ \t]+", re.MULTILINE), r"\1- "),  # bullets
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links -> link text
    (re.compile(r"<(https?://[^>\s]+)>"), r"\1"),  # autolinks
    (re.compile(r"`([^`\n]+)`"), r"\1"),  # inline code
    (re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"), r"\2"),  # strong
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])"), r"\1"),  # emphasis *x*
    (re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])"), r"\1"),  # emphasis _x_
)


def markdown_to_text(markdown: str) -> str:
    """Turn Markdown into plain text with paragraph breaks (markup removed, words kept).

    Args:
        markdown: The Markdown body (without front matter).

    Returns:
        Normalised plain text.
    """
    text = markdown
    for pattern, replacement in _MD_RULES:
        text = pattern.sub(replacement, text)
    return normalize_text(text)


class _HtmlExtractor(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "head", "svg", "iframe", "object", "canvas"})
    _BLOCK = frozenset(
        {
            "address", "article", "aside", "blockquote", "body", "dd", "details", "div", "dl", "dt", "fieldset",
            "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
            "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "td", "th", "thead", "tr", "ul",
        }
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self.meta: dict[str, str] = {}
        self._skip: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "meta":
            values = {k.lower(): (v or "") for k, v in attrs}
            name = values.get("name", "")
            if name.lower().startswith("evertune:"):
                self.meta.setdefault(name[len("evertune:") :].lower(), values.get("content", ""))
        elif tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip.append(tag)
        elif tag == "br":
            self.parts.append("\n")
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            return  # a self-closed <script/> opens nothing
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP:
            if tag in self._skip:
                while self._skip and self._skip.pop() != tag:
                    pass
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif not self._skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> tuple[str, str, dict[str, str]]:
    """Extract the visible text, the ``<title>`` and the ``evertune:*`` meta tags of an HTML page.

    ``<script>``, ``<style>`` (and other non-content elements) are dropped; block elements become paragraph
    breaks and ``<br>`` a line break.

    Args:
        html: The decoded HTML.

    Returns:
        (text, title, meta) with ``meta`` keyed by the field name after ``evertune:``.

    Raises:
        ValueError: The markup cannot be parsed at all.
    """
    parser = _HtmlExtractor()
    try:
        parser.feed(html)
        parser.close()
    except AssertionError as exc:  # html.parser signals some broken declarations this way
        raise ValueError(str(exc)) from None
    title = normalize_text(" ".join(parser.title_parts)).replace("\n", " ")
    return normalize_text("".join(parser.parts)), title, parser.meta


def parse_front_matter(text: str) -> tuple[dict[str, str], str]:
    """Split a ``---`` front-matter block (``key: value`` lines) from the body.

    Values are plain strings (no YAML typing, so dates and ``no`` stay strings); matching quotes are removed.

    Args:
        text: The whole decoded file.

    Returns:
        (fields, body).

    Raises:
        ValueError: The file does not start with a complete front-matter block.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not lines or lines[0].strip() != "---":
        raise ValueError("no front-matter block: the first line must be ---")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise ValueError("front-matter block is not closed by a --- line") from None
    fields: dict[str, str] = {}
    for number, line in enumerate(lines[1:end], start=2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"front-matter line {number} is not 'key: value'")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        fields.setdefault(key.strip().lower(), value)
    return fields, "\n".join(lines[end + 1 :])


# --------------------------------------------------------------------------- field checks


def to_utc_iso(value: str, name: str) -> str:
    """Parse an ISO 8601 timestamp that carries an offset and return it in UTC (``+00:00``).

    Raises:
        _Reject: ``invalid_timestamp`` when unparsable or without an offset.
    """
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise _Reject(q.INVALID_TIMESTAMP, f"{name} {value[:60]!r} is not ISO 8601") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _Reject(q.INVALID_TIMESTAMP, f"{name} {value[:60]!r} has no UTC offset")
    return parsed.astimezone(dt.UTC).isoformat()


def _string_field(record: dict[str, Any], name: str, *, required: bool, allow_empty: bool = False) -> str:
    value = record.get(name)
    if value is None:
        if required:
            raise _Reject(q.MISSING_FIELD, f"required field {name!r} is missing")
        return ""
    if not isinstance(value, str):
        raise _Reject(q.INVALID_FIELD, f"field {name!r} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Reject(q.BAD_ENCODING, f"field {name!r} holds a lone surrogate (not valid Unicode)") from None
    if _looks_binary(value):
        raise _Reject(q.BINARY_CONTENT, f"field {name!r} holds control characters (binary content)")
    if required and not allow_empty and not value.strip():
        raise _Reject(q.MISSING_FIELD, f"required field {name!r} is empty")
    return value


def _check_doc_id(value: str, name: str = "doc_id") -> str:
    if not DOC_ID_RE.fullmatch(value):
        raise _Reject(q.INVALID_DOC_ID, f"{name} {value[:90]!r} does not match [a-z0-9][a-z0-9-]{{1,79}}", value)
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


def _document(
    fields: dict[str, Any], text: str, fmt: str, record_ref: str, file: str, line: int | None
) -> dict[str, str]:
    doc_id = _check_doc_id(_string_field(fields, "doc_id", required=True))
    try:
        title = normalize_text(_string_field(fields, "title", required=True)).replace("\n", " ")
        source = _string_field(fields, "source", required=True).strip()
        url = _string_field(fields, "url", required=True).strip()
        updated_at = to_utc_iso(_string_field(fields, "updated_at", required=True), "updated_at")
        topic = _string_field(fields, "topic", required=False).strip()
    except _Reject as exc:
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


def _docs_line(record: dict[str, Any], ref: str, file: str, line: int) -> dict[str, str]:
    doc_id = _check_doc_id(_string_field(record, "doc_id", required=True))
    try:
        raw_text = _string_field(record, "text", required=True, allow_empty=True)
    except _Reject as exc:
        exc.doc_id = doc_id
        raise
    return _document(record, normalize_text(raw_text), "jsonl", ref, file, line)


def _tombstone_line(record: dict[str, Any], ref: str) -> dict[str, str]:
    doc_id = _check_doc_id(_string_field(record, "doc_id", required=True))
    try:
        deleted_at = to_utc_iso(_string_field(record, "deleted_at", required=True), "deleted_at")
        reason = _string_field(record, "reason", required=False)
    except _Reject as exc:
        exc.doc_id = doc_id
        raise
    return {"doc_id": doc_id, "deleted_at": deleted_at, "reason": normalize_text(reason), "record_ref": ref}


def _qa_id(record: dict[str, Any], name: str) -> str:
    value = _string_field(record, name, required=True).strip()
    if len(value) > _QA_ID_MAX or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise _Reject(q.INVALID_FIELD, f"{name} must be at most {_QA_ID_MAX} printable characters without spaces")
    return value


def _qa_line(record: dict[str, Any], ref: str) -> dict[str, str]:
    # Emptiness and the doc_id format of training pairs are checked by the validation suite, which reports them.
    doc_id = _string_field(record, "doc_id", required=True, allow_empty=True).strip()
    try:
        return {
            "qa_id": _qa_id(record, "qa_id"),
            "question": normalize_text(_string_field(record, "question", required=True, allow_empty=True)),
            "answer": normalize_text(_string_field(record, "answer", required=True, allow_empty=True)),
            "doc_id": doc_id,
            "fact_key": _string_field(record, "fact_key", required=False).strip(),
            "record_ref": ref,
        }
    except _Reject as exc:
        exc.doc_id = doc_id
        raise


def _golden_qa_line(record: dict[str, Any], ref: str) -> dict[str, str]:
    doc_id = _check_doc_id(_string_field(record, "doc_id", required=True).strip())
    try:
        return {
            "qa_id": _qa_id(record, "qa_id"),
            "question": normalize_text(_string_field(record, "question", required=True)),
            "answer": normalize_text(_string_field(record, "answer", required=True)),
            "doc_id": doc_id,
            "fact_key": _string_field(record, "fact_key", required=False).strip(),
        }
    except _Reject as exc:
        exc.doc_id = doc_id
        raise


def _golden_retrieval_line(record: dict[str, Any], ref: str) -> dict[str, Any]:
    query_id = _qa_id(record, "query_id")
    query = normalize_text(_string_field(record, "query", required=True))
    relevant = record.get("relevant_doc_ids")
    if relevant is None:
        raise _Reject(q.MISSING_FIELD, "required field 'relevant_doc_ids' is missing")
    if not isinstance(relevant, list) or not relevant or not all(isinstance(d, str) for d in relevant):
        raise _Reject(q.INVALID_FIELD, "relevant_doc_ids must be a non-empty list of strings")
    for doc_id in relevant:
        _check_doc_id(doc_id, "relevant doc_id")
    return {"query_id": query_id, "query": query, "relevant_doc_ids": sorted(set(relevant))}


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


def _decode(data: bytes) -> str:
    if b"\x00" in data:
        raise _Reject(q.BINARY_CONTENT, "contains NUL bytes (binary content)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Reject(q.BAD_ENCODING, f"not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    if _looks_binary(text):
        raise _Reject(q.BINARY_CONTENT, "more than 1% control characters (binary content)")
    return text


def _reject_json_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


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
            "docs.jsonl": _docs_line if "jsonl" in self.formats else None,
            "tombstones.jsonl": _tombstone_line,
            "qa.jsonl": _qa_line,
            "golden/retrieval.jsonl": _golden_retrieval_line,
            "golden/qa.jsonl": _golden_qa_line,
        }
        suffix = posixpath.splitext(entry.rel)[1].lower()
        if entry.rel in jsonl_handlers and jsonl_handlers[entry.rel] is not None:
            self.read_jsonl(entry, ref, jsonl_handlers[entry.rel])
        elif entry.rel.startswith("docs/") and _DOC_FILE_FORMATS.get(suffix) in self.formats:
            self.records_read += 1
            try:
                self.documents.append(self.read_document(entry, ref, _DOC_FILE_FORMATS[suffix]))
            except _Reject as exc:
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

    def classify_os_error(self, exc: OSError, ref: str) -> _Reject:
        # Permission problems are a property of the file; anything else (network, vanished file) may be transient.
        if isinstance(exc, (PermissionError, IsADirectoryError)):
            return _Reject(q.UNREADABLE_FILE, f"cannot read the file: {type(exc).__name__}")
        raise TransientError(f"reading {ref} from the landing zone failed: {exc}") from exc

    def read_document(self, entry: _Entry, ref: str, fmt: str) -> dict[str, str]:
        if entry.size is not None and entry.size > self.max_bytes:
            raise _Reject(q.OVERSIZED, f"file is {entry.size} bytes, ingest.max_file_bytes is {self.max_bytes}")
        try:
            data = _read_bounded(self.fs, entry.path, self.max_bytes)
        except OSError as exc:
            raise self.classify_os_error(exc, ref) from None
        if len(data) > self.max_bytes:
            raise _Reject(q.OVERSIZED, f"file is larger than ingest.max_file_bytes ({self.max_bytes})")
        if not data.strip():
            raise _Reject(q.EMPTY_FILE, "file is empty" if not data else "file holds only whitespace")
        raw = _decode(data)
        if fmt == "html":
            try:
                text, title, fields = html_to_text(raw)
            except ValueError as exc:
                raise _Reject(q.MALFORMED_HTML, f"cannot parse HTML: {str(exc)[:120]}") from None
            fields = dict(fields)
            if title:
                fields["title"] = title
        else:
            try:
                fields, body = parse_front_matter(raw)
            except ValueError as exc:
                raise _Reject(q.MISSING_FIELD, str(exc)) from None
            text = markdown_to_text(body) if fmt == "md" else normalize_text(body)
        return _document(fields, text, fmt, ref, entry.rel, None)

    def read_jsonl(self, entry: _Entry, ref: str, handler: Any) -> None:
        target = {
            _docs_line: self.documents,
            _tombstone_line: self.tombstones,
            _qa_line: self.qa,
            _golden_retrieval_line: self.golden_retrieval,
            _golden_qa_line: self.golden_qa,
        }[handler]
        try:
            for number, raw in _iter_lines(self.fs, entry.path, self.max_bytes):
                if raw is not None and not raw.strip():
                    continue  # blank lines (a trailing newline) are not records
                self.records_read += 1
                line_ref = f"{ref}:{number}"
                try:
                    record = self.parse_json_line(raw)
                    if handler is _docs_line:
                        target.append(handler(record, line_ref, entry.rel, number))
                    else:
                        target.append(handler(record, line_ref))
                except _Reject as exc:
                    self.reject(line_ref, exc.reason, exc.detail, exc.doc_id)
        except OSError as exc:
            reject = self.classify_os_error(exc, ref)  # raises TransientError unless it is about the file itself
            self.records_read += 1
            self.reject(ref, reject.reason, reject.detail)

    def parse_json_line(self, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            raise _Reject(q.OVERSIZED, f"line is longer than ingest.max_file_bytes ({self.max_bytes})")
        try:
            record = json.loads(_decode(raw), parse_constant=_reject_json_constant)
        except json.JSONDecodeError as exc:
            raise _Reject(q.MALFORMED_JSON, f"invalid JSON: {exc.msg} at column {exc.colno}") from None
        except (ValueError, RecursionError) as exc:
            raise _Reject(q.MALFORMED_JSON, f"invalid JSON: {str(exc)[:120]}") from None
        if not isinstance(record, dict):
            raise _Reject(q.MALFORMED_JSON, f"line is a JSON {type(record).__name__}, not an object")
        return record


def _frame(rows: list[dict[str, str]], columns: tuple[str, ...]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame({col: pd.Series([row[col] for row in rows], dtype="str") for col in columns})


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
    reader.golden_retrieval.sort(key=lambda r: (r["query_id"], r["query"]))
    reader.golden_qa.sort(key=lambda r: (r["qa_id"], r["question"]))
    return IngestResult(
        interval=interval,
        partition_found=found,
        documents=_frame(reader.documents, DOC_COLUMNS),
        tombstones=_frame(reader.tombstones, TOMBSTONE_COLUMNS),
        qa=_frame(reader.qa, QA_COLUMNS),
        golden_retrieval=reader.golden_retrieval,
        golden_qa=reader.golden_qa,
        quarantine=quarantine_frame(reader.quarantine),
        records_read=reader.records_read,
        files_read=reader.files_read,
    )

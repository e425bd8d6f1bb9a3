"""The answer cache: a LanceDB table of served answers, keyed on the normalised question and the versions.

A row's key is the sha256 of the normalised question (:func:`normalize_question`: NFKC, casefold, whitespace
collapsed, trailing punctuation stripped) together with the model name and version, the KB table and version
and the prompt version (:func:`cache_key`). The versions being part of the key makes a promotion or a publish
invalidate by key: the next request on the new versions computes another key and misses. Rows of versions no
longer served are deleted by the first store after the served versions changed (:meth:`AnswerCache.put`), so
the table holds one served combination at a time (plus rows of other servers sharing it) and never grows
without bound; ``serve.cache.max_rows`` caps it on top (the oldest rows go first).

Exact hits (same key) are served without generation. Semantic hits are optional
(``serve.cache.semantic_threshold``, off by default): the question is embedded with the KB embedder and the
most similar cached question *of the same versions* is served when its cosine similarity reaches the
threshold (a brute-force scan of those rows, at most ``max_rows``).

A stored row: ``key``, ``question``, ``question_norm``, ``answer``, ``citations`` (JSON, as ``/ask`` returns
them), ``doc_ids`` (the cited documents, a list column for invalidation), the versions, ``answer_id``,
``created`` (when it was stored; not part of the key) and ``vector`` (empty unless semantic hits are on).
Writes are ``merge_insert`` on ``key`` inserting only rows not yet there: a retry, or two servers storing the
same answer, leave one row (first write wins; greedy generation makes both the same answer).

Tombstones: :func:`invalidate_tombstoned` (called after a KB publish, see
:func:`evertune.kb.refresh.publish_index`) deletes every row citing a tombstoned document
(:meth:`AnswerCache.invalidate_docs`); without a cache table it does nothing.

Threads: the server answers requests in several threads. Writes (store, delete, compaction) are serialised
by one lock per :class:`AnswerCache`; reads take no lock (a short lock guards only the in-memory memo below).
A failure never fails a request: a failed read is a miss and a failed write is logged.

Reads: exact hits are memoised in memory (a dict from key to answer: a subset of the table's rows, so at most
``max_rows``), because a LanceDB lookup costs milliseconds on a busy host. The memo is valid while the table is
at a version this object wrote or read: the table handle is opened with a read consistency interval of
:data:`READ_CONSISTENCY_SECONDS`, the version is checked at most that often, and a version written by
someone else (a tombstone invalidation in an Airflow task, another server) empties the memo, as does every
delete and compaction here. Deletions by another process therefore reach a server's answers within about
:data:`READ_CONSISTENCY_SECONDS`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from evertune.config import Params
    from evertune.config_ops import ServeCacheParams
    from evertune.settings import Settings

log = logging.getLogger(__name__)

#: Bump when the key recipe changes (old rows then simply miss).
KEY_VERSION = "1"
#: The version fields a key (and a row) carries, in key order.
VERSION_FIELDS = ("model_name", "model_version", "kb_table", "kb_version", "prompt_version")
#: Deletions by another process are seen by a server's reads within this many seconds.
READ_CONSISTENCY_SECONDS = 1.0
#: Row versions older than this are removed by a compaction (readers of an older version may still use them).
CLEANUP_OLDER_THAN = dt.timedelta(minutes=10)
#: Tries of a delete whose commit conflicts with a concurrent write.
DELETE_ATTEMPTS = 3
#: ``question -> vector`` (the KB embedder, query side).
Embed = Callable[[str], Sequence[float]]


def normalize_question(question: str) -> str:
    """The question as the cache compares it: NFKC, casefolded, whitespace collapsed, trailing punctuation off.

    Only punctuation at the end is stripped (Unicode category ``P*``: ``?``, ``!``, ``.``, ``…``, ``？``), so
    ``C++`` and ``.NET`` keep their meaning.
    """
    text = " ".join(unicodedata.normalize("NFKC", question).casefold().split())
    end = len(text)
    while end and (text[end - 1].isspace() or unicodedata.category(text[end - 1]).startswith("P")):
        end -= 1
    return text[:end]


def version_tuple(versions: Mapping[str, Any]) -> tuple[Any, ...]:
    """The versions of :data:`VERSION_FIELDS`, in order."""
    return tuple(versions.get(name) for name in VERSION_FIELDS)


def cache_key(question: str, versions: Mapping[str, Any]) -> str:
    """The sha256 (hex) of the normalised question and the versions that would answer it."""
    payload = json.dumps([KEY_VERSION, normalize_question(question), *version_tuple(versions)], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def cache_schema() -> pa.Schema:
    """Arrow schema of the cache table."""
    import pyarrow as pa

    string = pa.string()
    return pa.schema([
        pa.field("key", string, nullable=False), pa.field("question", string), pa.field("question_norm", string),
        pa.field("answer", string), pa.field("citations", string), pa.field("doc_ids", pa.list_(string)),
        pa.field("model_name", string), pa.field("model_version", pa.int64()), pa.field("kb_table", string),
        pa.field("kb_version", pa.int64()), pa.field("prompt_version", string), pa.field("answer_id", string),
        pa.field("created", string), pa.field("vector", pa.list_(pa.float32())),
    ])  # fmt: skip


@dataclass(frozen=True)
class CachedAnswer:
    """A cache hit: the stored answer and citations, and how it matched (``exact`` or ``semantic``)."""

    answer: str
    citations: list[dict[str, Any]]
    answer_id: str
    question: str
    match: str = "exact"
    similarity: float = 1.0


def _versions_filter(versions: Mapping[str, Any]) -> str:
    from evertune.kb.table import sql_quote

    parts = []  # never NULL (three-valued logic would make NOT (...) skip rows with a NULL version)
    for name, value in zip(VERSION_FIELDS, version_tuple(versions), strict=True):
        if value is None:
            parts.append(f"{name} IS NULL")
        else:
            literal = int(value) if name in ("model_version", "kb_version") else sql_quote(str(value))
            parts.append(f"({name} IS NOT NULL AND {name} = {literal})")
    return " AND ".join(parts)


class AnswerCache:
    """Cached answers in one LanceDB table (see the module docstring).

    Args:
        uri: The LanceDB database (the settings' ``lancedb_uri``).
        config: ``serve.cache`` params.
        embed: Embeds a question for semantic hits; needed only when ``config.semantic_threshold`` is set.
        serving: The versions served right now (``None`` while nothing is); an answer of other versions (a
            request that was in flight during a switch) is then not stored, so it cannot delete the rows of
            the versions that replaced it.
    """

    def __init__(self, uri: str, config: ServeCacheParams, embed: Embed | None = None,
                 serving: Callable[[], Mapping[str, Any] | None] | None = None) -> None:
        if config.semantic_threshold is not None and embed is None:
            raise ValueError("semantic hits need an embed function")
        self.uri = uri
        self.config = config
        self.name = config.table
        self._embed = embed if config.semantic_threshold is not None else None
        self._serving = serving
        self._write_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._table: Any = None
        self._retained: tuple[Any, ...] | None = None
        self._puts = 0
        # Exact hits memoised in memory; valid while the table is at a version this object knows.
        self._memo: dict[str, CachedAnswer] = {}
        self._memo_lock = threading.Lock()
        self._generation = 0
        self._seen_version: int | None = None
        self._checked_at = 0.0

    @classmethod
    def from_params(cls, params: Params, settings: Settings,
                    serving: Callable[[], Mapping[str, Any] | None] | None = None) -> AnswerCache | None:
        """The cache of these params (``None`` when ``serve.cache.enabled`` is false); ``serving`` as above."""
        config = params.serve.cache
        if not config.enabled:
            return None
        embed = None
        if config.semantic_threshold is not None:
            from evertune.kb.embedding import embed_queries

            def embed(question: str) -> list[float]:
                return embed_queries([question], params)[0]

        return cls(settings.lancedb_uri, config, embed, serving)

    # ------------------------------------------------------------------ table

    def _connect(self) -> Any:
        import lancedb

        if "://" not in self.uri:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
        return lancedb.connect(self.uri, read_consistency_interval=dt.timedelta(seconds=READ_CONSISTENCY_SECONDS))

    def table(self, *, create: bool = False) -> Any | None:
        """The open table (``None`` when it does not exist and ``create`` is false)."""
        if self._table is not None:
            return self._table
        from evertune.kb.table import open_table

        with self._open_lock:
            if self._table is None:
                db = self._connect()
                table = open_table(db, self.name)
                if table is None and create:
                    table = db.create_table(self.name, schema=cache_schema(), exist_ok=True)
                self._table = table
        return self._table

    # ------------------------------------------------------------------ reads

    def get(self, question: str, versions: Mapping[str, Any]) -> CachedAnswer | None:
        """The cached answer to ``question`` on exactly these versions, or ``None`` (a miss; also on any error)."""
        try:
            table = self.table()
            if table is None:
                return None
            hit = self._exact(table, cache_key(question, versions))
            if hit is None and self._embed is not None:
                hit = self._semantic(table, question, versions)
            return hit
        except Exception:  # noqa: BLE001 -- a broken cache read is a miss, never a failed request
            log.exception("answer cache read failed (treated as a miss)")
            return None

    def peek(self, question: str, versions: Mapping[str, Any]) -> CachedAnswer | None:
        """The memoised exact hit, without any I/O (safe on an event loop); ``None`` when not memoised, or when the
        check for other processes' writes is due (then :meth:`get` makes it)."""
        if time.monotonic() - self._checked_at >= READ_CONSISTENCY_SECONDS:
            return None
        return self._memo.get(cache_key(question, versions))

    def _exact(self, table: Any, key: str) -> CachedAnswer | None:
        """The row under ``key``: from the memo, else from the table (then memoised)."""
        from evertune.kb.table import sql_quote

        self._check_foreign_writes(table)
        generation = self._generation
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        columns = ["answer", "citations", "answer_id", "question"]
        rows = table.search().where(f"key = {sql_quote(key)}").select(columns).limit(1).to_arrow().to_pylist()
        if not rows:
            return None
        hit = _hit(rows[0])
        with self._memo_lock:
            if generation == self._generation:  # no deletion since the read began
                self._memo[key] = hit
        return hit

    def _check_foreign_writes(self, table: Any) -> None:
        """Forget the memo when the table moved to a version this object did not write (at most once a second)."""
        now = time.monotonic()
        if now - self._checked_at < READ_CONSISTENCY_SECONDS:
            return
        self._checked_at = now
        version = int(table.version)
        if version != self._seen_version:
            self._forget(version)

    def _forget(self, version: int | None) -> None:
        with self._memo_lock:
            self._memo.clear()
            self._generation += 1
            self._seen_version = version

    def _wrote(self, before: int, after: int) -> None:
        """After this object's write: the memo still agrees unless another process wrote in between."""
        if before == self._seen_version and after == before + 1:
            with self._memo_lock:
                self._seen_version = after
        else:
            self._forget(after)

    def _semantic(self, table: Any, question: str, versions: Mapping[str, Any]) -> CachedAnswer | None:
        import numpy as np

        query = np.asarray(self._embed(question), dtype="float32")  # type: ignore[misc]
        columns = ["answer", "citations", "answer_id", "question", "vector"]
        where = f"{_versions_filter(versions)} AND array_length(vector) = {len(query)}"
        rows = table.search().where(where).select(columns).limit(self.config.max_rows).to_arrow().to_pylist()
        if not rows:
            return None
        matrix = np.asarray([row["vector"] for row in rows], dtype="float32")
        norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(query) or 1.0)
        similarity = matrix @ query / np.where(norms == 0, 1.0, norms)
        best = int(np.argmax(similarity))
        if float(similarity[best]) < float(self.config.semantic_threshold):  # type: ignore[arg-type]
            return None
        return _hit(rows[best], match="semantic", similarity=round(float(similarity[best]), 4))

    def count(self) -> int:
        """Rows in the table (0 without one)."""
        table = self.table()
        return 0 if table is None else int(table.count_rows())

    # ------------------------------------------------------------------ writes

    def put(
        self,
        question: str,
        versions: Mapping[str, Any],
        answer: str,
        citations: Sequence[Mapping[str, Any]],
        answer_id: str,
        created: str | None = None,
    ) -> bool:
        """Store an answer (idempotent: a row already under the key is kept as it is).

        The first store on versions other than the last stored ones first deletes the rows of every other
        version combination (those versions are no longer served). Every ``compact_every`` stores the table is
        compacted and trimmed to ``max_rows``.

        Returns:
            Whether the answer was written (``False`` when the versions are no longer served, or the write
            failed; the failure is logged).
        """
        now = self._serving() if self._serving is not None else None
        if now is not None and version_tuple(now) != version_tuple(versions):
            log.info("answer cache: not storing an answer of versions no longer served %s", version_tuple(versions))
            return False
        try:
            row = self._row(question, versions, answer, citations, answer_id, created)
            with self._write_lock:
                table = self.table(create=True)
                served = version_tuple(versions)
                if served != self._retained:
                    self._delete(table, f"NOT ({_versions_filter(versions)})")
                    self._retained = served
                before = int(table.version)
                self._wrote(before, int(table.merge_insert("key").when_not_matched_insert_all().execute([row]).version))
                self._puts += 1
                if self._puts % self.config.compact_every == 0:
                    self._compact(table)
            return True
        except Exception:  # noqa: BLE001 -- a failed cache write must not fail the answer
            log.exception("answer cache write failed")
            return False

    def _row(self, question: str, versions: Mapping[str, Any], answer: str,
             citations: Sequence[Mapping[str, Any]], answer_id: str, created: str | None) -> dict[str, Any]:
        vector = [float(x) for x in self._embed(question)] if self._embed is not None else []
        doc_ids = sorted({str(c.get("doc_id")) for c in citations if c.get("doc_id") is not None})
        return {"key": cache_key(question, versions), "question": question,
                "question_norm": normalize_question(question), "answer": answer,
                "citations": json.dumps(list(citations), ensure_ascii=False), "doc_ids": doc_ids,
                **dict(zip(VERSION_FIELDS, version_tuple(versions), strict=True)), "answer_id": answer_id,
                "created": created or dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"), "vector": vector}

    def _delete(self, table: Any, where: str) -> int:
        """Delete matching rows, retrying a commit that lost a race with another process's write (3 tries)."""
        for attempt in range(DELETE_ATTEMPTS):
            try:
                result = table.delete(where)
                break
            except Exception:  # noqa: BLE001 -- lance reports a commit conflict as a plain RuntimeError
                if attempt + 1 == DELETE_ATTEMPTS:
                    raise
                time.sleep(0.05 * (attempt + 1))
        removed = int(result.num_deleted_rows)
        self._forget(int(result.version))
        if removed:
            log.info("answer cache: deleted %d rows (%s)", removed, where[:200])
        return removed

    def _compact(self, table: Any) -> None:
        """Trim to ``max_rows`` (oldest ``created`` first), then compact the fragments the single-row writes made.

        A compaction that loses a race with another process's write is skipped (logged); the next one runs.
        """
        from evertune.kb.table import sql_quote

        try:
            surplus = table.count_rows() - self.config.max_rows
            if surplus > 0:
                created = sorted(table.search().select(["created"]).limit(None).to_arrow().column("created")
                                 .to_pylist())
                self._delete(table, f"created <= {sql_quote(created[surplus - 1])}")
            table.optimize(cleanup_older_than=CLEANUP_OLDER_THAN)
            self._forget(int(table.version))
        except Exception:  # noqa: BLE001 -- the answer is stored; compaction is retried at the next interval
            log.warning("answer cache compaction skipped", exc_info=True)

    def invalidate_docs(self, doc_ids: Iterable[str]) -> int:
        """Delete every cached answer that cites one of ``doc_ids`` (all versions); returns the rows deleted."""
        from evertune.kb.table import sql_quote

        ids = sorted({str(doc_id) for doc_id in doc_ids})
        if not ids:
            return 0
        with self._write_lock:
            table = self.table()
            if table is None:
                return 0
            removed = 0
            for start in range(0, len(ids), 256):
                batch = ", ".join(sql_quote(doc_id) for doc_id in ids[start : start + 256])
                removed += self._delete(table, f"array_has_any(doc_ids, make_array({batch}))")
            return removed


def _hit(row: Mapping[str, Any], match: str = "exact", similarity: float = 1.0) -> CachedAnswer:
    return CachedAnswer(str(row["answer"]), json.loads(row["citations"] or "[]"), str(row["answer_id"]),
                        str(row["question"]), match, similarity)


def invalidate_tombstoned(validated_dir: str | Path, params: Params, settings: Settings) -> int:
    """After a publish: delete cached answers citing a document tombstoned in this validated drop.

    Does nothing (returns 0) without a ``tombstones.parquet``, a tombstone, or a cache table; a cache turned
    off in params is still cleaned when its table exists (answers cached earlier must not outlive a deletion).

    Returns:
        Rows deleted.
    """
    from evertune.data import snapshot

    tombs = snapshot.read_table(Path(validated_dir), snapshot.TOMBSTONES, require=("doc_id",), missing_ok=True)
    doc_ids = [str(d) for d in tombs.column("doc_id").to_pylist() if d]
    removed = invalidate_doc_ids(doc_ids, params, settings)
    if doc_ids:
        log.info("answer cache: %d cached answers cited the %d tombstoned documents", removed, len(doc_ids))
    return removed


def invalidate_doc_ids(doc_ids: Iterable[str], params: Params, settings: Settings) -> int:
    """Delete every cached answer (any versions) citing one of ``doc_ids``; 0 without ids or a cache table.

    Used after each publish for that drop's tombstones (:func:`invalidate_tombstoned`) and by the refresh step
    ``apply_deletions`` for every document deleted up to the interval (a cache created after a tombstone's own
    publish is cleaned too).
    """
    doc_ids = sorted({str(d) for d in doc_ids if d})
    if not doc_ids:
        return 0
    cache = AnswerCache(settings.lancedb_uri, params.serve.cache.model_copy(update={"semantic_threshold": None}))
    return cache.invalidate_docs(doc_ids)


__all__ = ["AnswerCache", "CachedAnswer", "cache_key", "cache_schema", "invalidate_doc_ids", "invalidate_tombstoned",
           "normalize_question", "version_tuple"]

"""The LanceDB chunk index: one table per (prefix, chunker, embedder), synced one data interval at a time.

Layout in the LanceDB database (``settings.lancedb_uri``), for a chunk table ``T``:

* ``T``              the chunks and their vectors; readers open the ``production`` tag of it.
* ``T__docstate``    one row per document: the winning event (``updated_at``, ``interval``, ``deleted``).
* ``T__syncs``       one row per interval sync that wrote something (counts, resulting version).
* ``T__publish_log`` publish / rollback / rejection events (see :mod:`evertune.kb.publish`).

Schemas, names and the identity check live in :mod:`evertune.kb.table`; the full-text and vector indexes in
:mod:`evertune.kb.indexes`.

Order independence. Every document event (an upsert from ``documents.parquet`` or a tombstone from
``tombstones.parquet``) gets the key ``(timestamp, kind, interval)`` with kind 0 for an upsert and 1 for a
tombstone. The document's state is the event with the largest key ever seen. ``max`` is commutative and
idempotent, so applying a set of days in any order, or re-applying any of them, ends in the same state:
a newer upsert beats an older tombstone, a tombstone beats an upsert with ``updated_at <= deleted_at``,
an upsert never resurrects a newer tombstone, and ties between upserts go to the later interval. Chunks
are always a pure function of the winning document, so the chunk table converges too.

Crash safety. Chunks are written before the document state, and the chunk diff is computed against what
is really stored, never against the document state. A re-run after a crash recomputes the same diff
minus what already landed, and rebuilds a full-text index that a crash left short of rows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.data import snapshot
from evertune.data.doc_state import TOMBSTONE, UPSERT, DocEvent, resolve_doc_state
from evertune.errors import ConfigError, CriticalValidationError
from evertune.kb import indexes
from evertune.kb.chunk_diff import chunk_row, diff_chunks, merge_chunks
from evertune.kb.chunking import chunk_document
from evertune.kb.embedding import embed_texts, load_checked_embedder
from evertune.kb.table import (
    DOCSTATE_SUFFIX,
    META_DIM,
    META_EMBEDDER_ID,
    META_NORMALIZE,
    SYNCS_SUFFIX,
    VECTOR_COLUMN,
    check_table_identity,
    connect,
    docstate_schema,
    open_or_create,
    open_or_create_chunk_table,
    open_table,
    published_version,
    read_rows,
    read_table_rows,
    syncs_schema,
    table_metadata,
    table_name_for,
)

#: Public names, with the re-exports that callers import from here (each is defined once, in its own module).
__all__ = [
    "DOCSTATE_SUFFIX", "DOCUMENT_COLUMNS", "META_DIM", "META_EMBEDDER_ID", "META_NORMALIZE", "TOMBSTONE_COLUMNS",
    "PreparedSync", "SyncResult", "check_table_identity", "connect", "embed_texts", "finish_sync",
    "load_checked_embedder", "normalize_timestamp", "open_table", "plan_documents", "prepare_sync", "published_version", "read_table_rows", "read_validated", "sync_interval",
    "table_metadata", "table_name_for",
]  # fmt: skip

if TYPE_CHECKING:
    from evertune.config import Params
    from evertune.settings import Settings

log = logging.getLogger(__name__)

DOCUMENT_COLUMNS = ("doc_id", "title", "text", "source", "url", "updated_at", "content_hash", "metadata", "record_ref")
TOMBSTONE_COLUMNS = ("doc_id", "deleted_at", "reason")


@dataclass
class SyncResult:
    """What one :func:`sync_interval` did. ``version`` is the candidate table version to evaluate.

    ``fts_rebuilt`` says the full-text index was (re)built so that it covers every row of ``version``;
    ``chunks_embedded_in_merge`` counts texts a sharded merge found in no shard and embedded itself (0 normally).
    """

    table_name: str
    interval: str
    version: int
    previous_version: int
    wrote: bool
    docs_upserted: int = 0
    docs_deleted: int = 0
    docs_skipped_older: int = 0
    docs_unchanged: int = 0
    chunks_embedded: int = 0
    chunks_inserted: int = 0
    chunks_updated: int = 0
    chunks_deleted: int = 0
    chunks_unchanged: int = 0
    rows_total: int = 0
    optimized: bool = False
    vector_index: bool = False
    fts_rebuilt: bool = False
    chunks_embedded_in_merge: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-serialisable, e.g. for XCom)."""
        return asdict(self)


# ------------------------------------------------------------------------------------------ input


def normalize_timestamp(value: Any, *, what: str) -> str:
    """ISO 8601 in UTC with microseconds, so that string order is time order (the stored form).

    Raises:
        CriticalValidationError: The value is not a timestamp.
    """
    return snapshot.parse_timestamp(value, what=what).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _check_interval(interval: str) -> str:
    try:
        return dt.date.fromisoformat(str(interval)).isoformat()
    except ValueError:
        raise ConfigError(f"interval must be a YYYY-MM-DD date, got {interval!r}") from None


def read_validated(validated_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read the documents and (optional) tombstones of one validated interval through the snapshot contract.

    Returns:
        ``(documents, tombstones)`` as lists of dicts (the columns of :data:`DOCUMENT_COLUMNS` and
        :data:`TOMBSTONE_COLUMNS`), timestamps as :func:`normalize_timestamp` text.

    Raises:
        CriticalValidationError: The folder, the documents file or a column is missing, or a timestamp is invalid.
    """
    folder = Path(validated_dir)
    if not folder.is_dir():
        raise CriticalValidationError(f"validated folder not found: {folder}")
    docs = snapshot.read_table(folder, snapshot.DOCUMENTS, require=DOCUMENT_COLUMNS)
    tombs = snapshot.read_table(folder, snapshot.TOMBSTONES, require=TOMBSTONE_COLUMNS, missing_ok=True)
    docs_rows = docs.select(list(DOCUMENT_COLUMNS)).to_pylist()
    tomb_rows = tombs.select(list(TOMBSTONE_COLUMNS)).to_pylist()
    for doc in docs_rows:
        doc["updated_at"] = normalize_timestamp(doc["updated_at"], what=f"document {doc['doc_id']}")
    for tomb in tomb_rows:
        tomb["deleted_at"] = normalize_timestamp(tomb["deleted_at"], what=f"tombstone {tomb['doc_id']}")
    return docs_rows, tomb_rows


# ------------------------------------------------------------------------------------------ planning


def _event_key(row: dict[str, Any]) -> tuple[dt.datetime, int, str]:
    """The :attr:`~evertune.data.DocEvent.key` of a stored docstate row."""
    moment = snapshot.parse_timestamp(row["updated_at"], what=f"docstate {row['doc_id']}")
    return (moment, TOMBSTONE if row["deleted"] else UPSERT, row["interval"])


@dataclass
class _Plan:
    upserts: dict[str, dict[str, Any]]  # doc_id -> winning document of this drop
    scope: list[str]  # doc_ids whose chunks this drop owns (upserted, deleted or re-applied)
    state_rows: list[dict[str, Any]]  # docstate rows to write
    docs_upserted: int = 0
    docs_deleted: int = 0
    docs_skipped_older: int = 0
    docs_unchanged: int = 0


def plan_documents(
    docs: list[dict[str, Any]], tombs: list[dict[str, Any]], interval: str, state: dict[str, dict[str, Any]]
) -> _Plan:
    """Decide, per document of the drop, whether its event wins against the stored state.

    Args:
        docs: Documents of the drop (timestamps normalised).
        tombs: Tombstones of the drop (timestamps normalised).
        interval: The drop's interval date.
        state: Stored docstate rows of these doc ids.

    Returns:
        The plan: winning upserts, the doc ids in scope and the docstate rows to write.
    """
    events = [DocEvent.upsert(doc, interval) for doc in docs]
    events += [DocEvent.tombstone(tomb, interval) for tomb in tombs]
    winners = {doc_id: resolved.winner for doc_id, resolved in resolve_doc_state(events).items()}

    plan = _Plan(upserts={}, scope=[], state_rows=[])
    for doc_id in sorted(winners):
        event = winners[doc_id]
        current = state.get(doc_id)
        # The stored state loses ties: re-applying the same event (a re-run of the interval) re-applies it.
        if current is not None and _event_key(current) > event.key:
            plan.docs_skipped_older += 1
            continue
        plan.scope.append(doc_id)
        if not event.deleted:
            plan.upserts[doc_id] = {**event.row, "interval": interval, "deleted": False}
        new_state = {
            "doc_id": doc_id,
            "updated_at": normalize_timestamp(event.at, what=doc_id),
            "interval": interval,
            "content_hash": event.content_hash,
            "deleted": event.deleted,
        }
        same_event = current is not None and _event_key(current) == event.key
        if same_event and current.get("content_hash") == new_state["content_hash"]:
            plan.docs_unchanged += 1  # a re-run: re-applied (self-healing) but not counted as a change
        elif event.deleted:
            plan.docs_deleted += 1
        else:
            plan.docs_upserted += 1
        if current is None or any(current.get(key) != value for key, value in new_state.items()):
            plan.state_rows.append(new_state)
    return plan


# ------------------------------------------------------------------------------------------ embedding


def _embedder_id(params: Params) -> str:
    from evertune.models.embedder import embedder_id

    return embedder_id(params.embed)


def _chunk_rows(upserts: dict[str, dict[str, Any]], model: Any, params: Params) -> dict[str, dict[str, Any]]:
    """``chunk_id -> row`` of every chunk of the winning documents, in doc id order."""
    rows: dict[str, dict[str, Any]] = {}
    for doc_id in sorted(upserts):
        doc = upserts[doc_id]
        for chunk in chunk_document(
            doc, model.tokenizer, params.chunk, _embedder_id(params), max_seq_length=model.max_seq_length
        ):
            rows[chunk.chunk_id] = chunk_row(chunk, doc)
    return rows


def _attach_vectors(model: Any, rows: list[dict[str, Any]], vector_by_hash: dict[str, Any], params: Params) -> int:
    """Give every row its vector, embedding only texts whose content hash has none yet (each once).

    Returns:
        How many texts were embedded.
    """
    to_embed = sorted(
        {row["content_hash"]: row["text"] for row in rows if row["content_hash"] not in vector_by_hash}.items()
    )
    vectors = embed_texts(model, [text for _, text in to_embed], params)
    vector_by_hash.update({content_hash: vector for (content_hash, _), vector in zip(to_embed, vectors, strict=True)})
    for row in rows:
        row[VECTOR_COLUMN] = vector_by_hash[row["content_hash"]]
    return len(to_embed)


# ------------------------------------------------------------------------------------------ writing


def _write_docstate(docstate: Any, state_rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa

    state_table = pa.Table.from_pylist(state_rows, schema=docstate_schema())
    docstate.merge_insert("doc_id").when_matched_update_all().when_not_matched_insert_all().execute(state_table)


def _finish_indexes(db: Any, table: Any, result: SyncResult, params: Params) -> None:
    """Vector index, periodic compaction, a full-text index covering every row, then the ledger row.

    The ledger records the final version (the candidate), written after every index step, so the version it
    names has the complete full-text index.
    """
    import pyarrow as pa

    result.rows_total = table.count_rows()
    result.vector_index = indexes.ensure_vector_index(table, params, result.rows_total)
    syncs = open_or_create(db, table.name + SYNCS_SUFFIX, syncs_schema()) if result.wrote else None
    if syncs is not None and indexes.optimize_due(syncs.count_rows() + 1, params):
        indexes.optimize(table)  # compaction + new rows into the indexes; never prunes
        result.optimized = True
    # Also when nothing was written: repairs an index that a crash after the merge left short of rows.
    result.fts_rebuilt = indexes.ensure_fts_index(table, result.rows_total)
    if syncs is not None:
        counts = {key: value for key, value in result.to_dict().items() if key.startswith(("docs_", "chunks_"))}
        ledger = {
            "sync_id": f"{result.interval}@{table.version}",
            "interval": result.interval,
            "table_version": table.version,
            "counts": json.dumps(counts, sort_keys=True),
        }
        syncs.merge_insert("sync_id").when_not_matched_insert_all().execute(
            pa.Table.from_pylist([ledger], schema=syncs_schema())
        )
    result.version = table.version


# ------------------------------------------------------------------------------------------ sync


class _Laps:
    """Wall time of each step of a sync, in seconds."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.started = self._tick = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._tick, 4)
        self._tick = now

    def total(self) -> float:
        self.timings["total"] = round(time.perf_counter() - self.started, 4)
        return self.timings["total"]


@dataclass
class PreparedSync:
    """A sync up to its embedding: the plan and the chunk diff against the stored rows, nothing written yet.

    ``vector_by_hash`` holds the stored vectors of the drop's documents (keyed on ``content_hash``);
    :meth:`pending` is what has none yet, the only texts a sync embeds.
    """

    interval: str
    model: Any
    db: Any
    table: Any
    docstate: Any
    plan: _Plan
    diff: Any
    vector_by_hash: dict[str, Any]
    laps: _Laps

    def pending(self) -> list[tuple[str, str]]:
        """``(content_hash, text)`` of every written row whose text has no stored vector, sorted by hash."""
        rows = self.diff.inserts + self.diff.updates
        return sorted({row["content_hash"]: row["text"] for row in rows if row["content_hash"] not in
                       self.vector_by_hash}.items())


def prepare_sync(validated_dir: str | Path, interval: str, params: Params, settings: Settings) -> PreparedSync:
    """Read a validated interval, plan it against the stored document state and diff its chunks (no writes).

    Raises:
        CriticalValidationError: The validated folder is unusable.
        ConfigError: The table exists with another identity, or chunk sizes do not fit the embedder.
    """
    laps = _Laps()
    interval = _check_interval(interval)
    docs, tombs = read_validated(validated_dir)
    laps.lap("read")
    model, dim = load_checked_embedder(params)
    laps.lap("load_embedder")
    db = connect(settings)
    table = open_or_create_chunk_table(db, params, dim)
    docstate = open_or_create(db, table.name + DOCSTATE_SUFFIX, docstate_schema())
    laps.lap("open")  # includes the first lancedb import in a fresh process

    doc_ids = sorted({row["doc_id"] for row in docs} | {row["doc_id"] for row in tombs})
    state_columns = ["doc_id", "updated_at", "interval", "content_hash", "deleted"]
    state = {row["doc_id"]: row for row in read_rows(docstate, "doc_id", doc_ids, state_columns)}
    plan = plan_documents(docs, tombs, interval, state)
    laps.lap("plan")
    new_rows = _chunk_rows(plan.upserts, model, params)
    laps.lap("chunk")
    stored_columns = ["chunk_id", "doc_id", "content_hash", "row_hash", VECTOR_COLUMN]
    stored = {row["chunk_id"]: row for row in read_rows(table, "doc_id", plan.scope, stored_columns)}
    diff = diff_chunks(new_rows, stored)
    laps.lap("diff")
    vector_by_hash = {row["content_hash"]: row[VECTOR_COLUMN] for row in stored.values()}
    return PreparedSync(interval, model, db, table, docstate, plan, diff, vector_by_hash, laps)


def finish_sync(prepared: PreparedSync, params: Params, vectors: dict[str, Any] | None = None) -> SyncResult:
    """Give every written row its vector, merge the diff in one commit, then the document state and the indexes.

    Args:
        prepared: What :func:`prepare_sync` computed.
        params: Pipeline params.
        vectors: ``content_hash -> vector`` embedded elsewhere (the shards of :mod:`evertune.kb.shards`); a
            pending text missing from it is embedded here (counted in ``chunks_embedded_in_merge``).

    Returns:
        The :class:`SyncResult` (see :func:`sync_interval`, which also lists what it raises).
    """
    table, plan, diff, laps = prepared.table, prepared.plan, prepared.diff, prepared.laps
    pending = {content_hash for content_hash, _ in prepared.pending()}
    vector_by_hash = dict(prepared.vector_by_hash)
    vector_by_hash.update({key: value for key, value in (vectors or {}).items() if key in pending})
    embedded_here = _attach_vectors(prepared.model, diff.inserts + diff.updates, vector_by_hash, params)
    laps.lap("embed")

    result = SyncResult(
        table_name=table.name, interval=prepared.interval, version=table.version, previous_version=table.version,
        wrote=diff.changed, docs_upserted=plan.docs_upserted, docs_deleted=plan.docs_deleted,
        docs_skipped_older=plan.docs_skipped_older, docs_unchanged=plan.docs_unchanged, chunks_embedded=len(pending),
        chunks_inserted=len(diff.inserts), chunks_updated=len(diff.updates), chunks_deleted=len(diff.stale),
        chunks_unchanged=diff.unchanged, timings=laps.timings,
        chunks_embedded_in_merge=embedded_here if vectors is not None else 0,
    )  # fmt: skip
    if diff.changed:
        merge_chunks(table, diff, plan.scope)
        laps.lap("write")
    if plan.state_rows:
        # After the chunks: a crash in between leaves the state behind, and a re-run catches up.
        _write_docstate(prepared.docstate, plan.state_rows)
        laps.lap("docstate")
    _finish_indexes(prepared.db, table, result, params)
    laps.lap("index")
    log.info(
        "kb sync %s into %s: v%s -> v%s, %s embedded, +%s ~%s -%s chunks, %.2fs",
        prepared.interval, table.name, result.previous_version, result.version, result.chunks_embedded,
        result.chunks_inserted, result.chunks_updated, result.chunks_deleted, laps.total(),
    )  # fmt: skip
    return result


def sync_interval(validated_dir: str | Path, interval: str, params: Params, settings: Settings) -> SyncResult:
    """Apply one validated interval to the chunk table: embed only new/changed chunks, delete stale ones.

    :func:`prepare_sync`, then :func:`finish_sync` embedding every pending text here; the sharded refresh
    (:mod:`evertune.kb.shards`) runs the same two with the embedding spread over workers in between.

    Args:
        validated_dir: Folder with ``documents.parquet`` and optionally ``tombstones.parquet``.
        interval: The data interval date (``YYYY-MM-DD``); breaks ``updated_at`` ties between drops.
        params: Pipeline params (``chunk``, ``embed``, ``index`` sections).
        settings: Deployment settings (``lancedb_uri``).

    Returns:
        A :class:`SyncResult`; ``version`` is the candidate to evaluate and publish: its full-text index covers
        every row. When nothing changed (and the index was complete) no version is written and ``version`` is
        the current one.

    Raises:
        CriticalValidationError: The validated folder is unusable.
        ConfigError: The table exists with another identity, or chunk sizes do not fit the embedder.
        TransientError: LanceDB's merge counts disagree with the diff, or the full-text index misses rows (e.g.
            a concurrent writer); the table is left at a new, unpublished version and a retry recomputes the diff.
    """
    return finish_sync(prepare_sync(validated_dir, interval, params, settings), params)

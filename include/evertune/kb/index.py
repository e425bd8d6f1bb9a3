"""The LanceDB chunk index: one table per (prefix, chunker, embedder), synced one data interval at a time.

Layout in the LanceDB database (``settings.lancedb_uri``), for a chunk table ``T``:

* ``T``              the chunks and their vectors; readers open the ``production`` tag of it.
* ``T__docstate``    one row per document: the winning event (``updated_at``, ``interval``, ``deleted``).
* ``T__syncs``       one row per interval sync that wrote something (counts, resulting version).
* ``T__publish_log`` publish / rollback / rejection events (see :mod:`evertune.kb.publish`).

Order independence. Every document event (an upsert from ``documents.parquet`` or a tombstone from
``tombstones.parquet``) gets the key ``(timestamp, kind, interval)`` with kind 0 for an upsert and 1 for a
tombstone. The document's state is the event with the largest key ever seen. ``max`` is commutative and
idempotent, so applying a set of days in any order, or re-applying any of them, ends in the same state:
a newer upsert beats an older tombstone, a tombstone beats an upsert with ``updated_at <= deleted_at``,
an upsert never resurrects a newer tombstone, and ties between upserts go to the later interval. Chunks
are always a pure function of the winning document, so the chunk table converges too.

Crash safety. Chunks are written before the document state, and the chunk diff is computed against what
is really stored, never against the document state. A re-run after a crash recomputes the same diff
minus what already landed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.data import snapshot
from evertune.data.doc_state import TOMBSTONE, UPSERT, DocEvent, resolve_doc_state
from evertune.errors import ConfigError, CriticalValidationError, TransientError
from evertune.kb.chunking import Chunk, chunk_document, chunker_id

if TYPE_CHECKING:
    import pyarrow as pa

    from evertune.config import Params
    from evertune.settings import Settings

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
DOCSTATE_SUFFIX = "__docstate"
SYNCS_SUFFIX = "__syncs"
FTS_COLUMN = "text"
VECTOR_COLUMN = "vector"
DISTANCE = "cosine"
#: optimize() never prunes versions: LanceDB raises when a tagged version would be pruned, and published
#: versions must stay restorable. Pruning is a deliberate maintenance step, not part of the nightly sync.
_NO_PRUNE = dt.timedelta(days=36500)
_IN_BATCH = 256

META_SCHEMA_VERSION = "evertune.schema_version"
META_EMBEDDER_ID = "evertune.embedder_id"
META_EMBED_MODEL = "evertune.embed_model"
META_DIM = "evertune.embedding_dim"
META_NORMALIZE = "evertune.normalize"
META_CHUNKER_ID = "evertune.chunker_id"

DOCUMENT_COLUMNS = ("doc_id", "title", "text", "source", "url", "updated_at", "content_hash", "metadata", "record_ref")
TOMBSTONE_COLUMNS = ("doc_id", "deleted_at", "reason")



@dataclass
class SyncResult:
    """What one :func:`sync_interval` did. ``version`` is the candidate table version to evaluate."""

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
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-serialisable, e.g. for XCom)."""
        return asdict(self)


# ----------------------------------------------------------------------------------------------- naming


def _slug(value: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in value).strip("_").lower()


def table_name_for(params: Params) -> str:
    """Name of the chunk table for the configured prefix, chunker and embedder.

    A new embedder or chunker gives a new table, so vectors of different models are never mixed.
    """
    from evertune.models.embedder import embedder_id

    return f"{params.index.table_prefix}__{_slug(chunker_id(params.chunk))}__{_slug(embedder_id(params.embed))}"


def expected_metadata(params: Params, dim: int) -> dict[str, str]:
    """The identity a chunk table must carry in its schema metadata."""
    from evertune.models.embedder import embedder_id

    return {
        META_SCHEMA_VERSION: SCHEMA_VERSION,
        META_EMBEDDER_ID: embedder_id(params.embed),
        META_EMBED_MODEL: params.embed.model,
        META_DIM: str(dim),
        META_NORMALIZE: str(params.embed.normalize).lower(),
        META_CHUNKER_ID: chunker_id(params.chunk),
    }


# ------------------------------------------------------------------------------------------ connection


def connect(settings: Settings) -> Any:
    """Open the LanceDB database of these settings (creating a local folder when needed)."""
    import lancedb

    if "://" not in settings.lancedb_uri:
        Path(settings.lancedb_uri).mkdir(parents=True, exist_ok=True)
    return lancedb.connect(settings.lancedb_uri)


def open_table(db: Any, name: str) -> Any | None:
    """Open a table, or return ``None`` when it does not exist."""
    try:
        return db.open_table(name)
    except ValueError as exc:
        if "not found" in str(exc).lower():
            return None
        raise


def table_metadata(table: Any) -> dict[str, str]:
    """The schema metadata of a table as ``str -> str``."""
    raw = table.schema.metadata or {}
    return {key.decode(): value.decode() for key, value in raw.items()}


def check_table_identity(table: Any, params: Params, dim: int | None = None) -> dict[str, str]:
    """Refuse a table built with another embedder, dimension, normalisation or chunker.

    Args:
        table: An open chunk table.
        params: The params the caller will use to embed queries or chunks.
        dim: The embedder's dimension, when known.

    Returns:
        The table's metadata.

    Raises:
        ConfigError: Any recorded identity field differs from the configuration.
    """
    meta = table_metadata(table)
    want = expected_metadata(params, dim if dim is not None else int(meta.get(META_DIM, "0")))
    problems = [
        f"{key}: table has {meta.get(key)!r}, configuration gives {want[key]!r}"
        for key in (META_SCHEMA_VERSION, META_EMBEDDER_ID, META_DIM, META_NORMALIZE, META_CHUNKER_ID)
        if meta.get(key) != want[key]
    ]
    if problems:
        raise ConfigError(f"LanceDB table {table.name!r} does not match the configuration: " + "; ".join(problems))
    return meta


def chunk_schema(params: Params, dim: int) -> pa.Schema:
    """Arrow schema of a chunk table, identity recorded in the schema metadata."""
    import pyarrow as pa

    string = pa.string()
    return pa.schema(
        [
            pa.field("chunk_id", string, nullable=False),
            pa.field("doc_id", string, nullable=False),
            pa.field("ordinal", pa.int32()),
            pa.field("title", string),
            pa.field("body", string),
            pa.field("text", string),
            pa.field("source", string),
            pa.field("url", string),
            pa.field("doc_updated_at", string),
            pa.field("metadata", string),
            pa.field("content_hash", string),
            pa.field("row_hash", string),
            pa.field(VECTOR_COLUMN, pa.list_(pa.float32(), dim)),
        ],
        metadata={key.encode(): value.encode() for key, value in expected_metadata(params, dim).items()},
    )


def docstate_schema() -> pa.Schema:
    """Arrow schema of the per-document state table."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("updated_at", pa.string()),
            pa.field("interval", pa.string()),
            pa.field("content_hash", pa.string()),
            pa.field("deleted", pa.bool_()),
        ]
    )


def syncs_schema() -> pa.Schema:
    """Arrow schema of the sync ledger."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("sync_id", pa.string(), nullable=False),
            pa.field("interval", pa.string()),
            pa.field("table_version", pa.int64()),
            pa.field("counts", pa.string()),
        ]
    )


def open_or_create_chunk_table(db: Any, params: Params, dim: int) -> Any:
    """Open the chunk table (checking its identity) or create it with its full-text index."""
    from lancedb.index import FTS

    name = table_name_for(params)
    table = open_table(db, name)
    if table is None:
        table = db.create_table(name, schema=chunk_schema(params, dim), exist_ok=True)
        check_table_identity(table, params, dim)
        # Created on the empty table so every later version (every candidate) has it.
        table.create_index(FTS_COLUMN, config=FTS(with_position=False), replace=True)
        return table
    check_table_identity(table, params, dim)
    return table


def _open_or_create(db: Any, name: str, schema: pa.Schema) -> Any:
    table = open_table(db, name)
    return table if table is not None else db.create_table(name, schema=schema, exist_ok=True)


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


# ------------------------------------------------------------------------------------------ helpers


def sql_quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def _batches(values: Sequence[str], size: int = _IN_BATCH) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def in_list(column: str, values: Iterable[str]) -> str:
    """``column IN ('a', 'b')`` with proper quoting."""
    return f"{column} IN ({', '.join(sql_quote(value) for value in values)})"


def read_rows(table: Any, column: str, values: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows whose ``column`` is in ``values`` (batched ``IN`` filters, no row limit)."""
    rows: list[dict[str, Any]] = []
    for batch in _batches(sorted(set(values))):
        query = table.search().where(in_list(column, batch)).select(list(columns)).limit(None)
        rows.extend(query.to_arrow().to_pylist())
    return rows


def _row_hash(row: dict[str, Any]) -> str:
    payload = {key: value for key, value in row.items() if key not in (VECTOR_COLUMN, "row_hash")}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def chunk_row(chunk: Chunk, doc: dict[str, Any]) -> dict[str, Any]:
    """The stored row of a chunk (without its vector), ``row_hash`` covering every stored field."""
    row = {
        "chunk_id": chunk.chunk_id,
        "doc_id": chunk.doc_id,
        "ordinal": chunk.ordinal,
        "title": chunk.title,
        "body": chunk.body,
        "text": chunk.text,
        "source": doc.get("source"),
        "url": doc.get("url"),
        "doc_updated_at": doc["updated_at"],
        "metadata": doc.get("metadata"),
        "content_hash": chunk.content_hash,
    }
    row["row_hash"] = _row_hash(row)
    return row


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


def embed_texts(model: Any, texts: list[str], params: Params) -> list[list[float]]:
    """Embed texts with the ``embed`` settings; chunks and queries both go through here, so they always match."""
    if not texts:
        return []
    vectors = model.encode(
        texts,
        batch_size=params.embed.batch_size,
        normalize_embeddings=params.embed.normalize,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return [vector.astype("float32").tolist() for vector in vectors]


def load_checked_embedder(params: Params) -> tuple[Any, int]:
    """Load the embedder and check that a chunk (plus special tokens) fits its input size.

    Returns:
        ``(model, dimension)``.

    Raises:
        ConfigError: ``chunk.chunk_tokens`` exceeds what the model reads.
    """
    from evertune.models.embedder import load_embedder

    model = load_embedder(params.embed)
    limit = model.max_seq_length
    special = model.tokenizer.num_special_tokens_to_add(pair=False)
    if limit and params.chunk.chunk_tokens + special > limit:
        raise ConfigError(
            f"chunk.chunk_tokens={params.chunk.chunk_tokens} plus {special} special tokens exceeds the "
            f"embedder's max_seq_length={limit}; the tail of every chunk would be silently truncated"
        )
    return model, int(model.get_embedding_dimension())


def _ensure_vector_index(table: Any, params: Params, rows: int) -> bool:
    """Build the ANN index once the table is big enough; exact search is better below that."""
    from lancedb.index import IvfPq

    if any(VECTOR_COLUMN in index.columns for index in table.list_indices()):
        return True
    if rows < params.index.vector_index_min_rows:
        return False
    table.create_index(VECTOR_COLUMN, config=IvfPq(distance_type=DISTANCE), replace=False)
    return True


# ------------------------------------------------------------------------------------------ sync


def sync_interval(validated_dir: str | Path, interval: str, params: Params, settings: Settings) -> SyncResult:
    """Apply one validated interval to the chunk table: embed only new/changed chunks, delete stale ones.

    Args:
        validated_dir: Folder with ``documents.parquet`` and optionally ``tombstones.parquet``.
        interval: The data interval date (``YYYY-MM-DD``); breaks ``updated_at`` ties between drops.
        params: Pipeline params (``chunk``, ``embed``, ``index`` sections).
        settings: Deployment settings (``lancedb_uri``).

    Returns:
        A :class:`SyncResult`; ``version`` is the candidate to evaluate and publish. When nothing changed
        no version is written and ``version`` is the current one.

    Raises:
        CriticalValidationError: The validated folder is unusable.
        ConfigError: The table exists with another identity, or chunk sizes do not fit the embedder.
        TransientError: LanceDB's merge counts disagree with the computed diff (e.g. a concurrent writer);
            the table is left at a new, unpublished version and a retry recomputes the diff.
    """
    import pyarrow as pa

    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 4)
        return now

    interval = _check_interval(interval)
    docs, tombs = read_validated(validated_dir)
    tick = lap("read", started)

    model, dim = load_checked_embedder(params)
    tick = lap("load_embedder", tick)

    db = connect(settings)
    table = open_or_create_chunk_table(db, params, dim)
    name = table.name
    docstate = _open_or_create(db, name + DOCSTATE_SUFFIX, docstate_schema())
    previous_version = table.version
    tick = lap("open", tick)  # includes the first lancedb import in a fresh process

    doc_ids = sorted({row["doc_id"] for row in docs} | {row["doc_id"] for row in tombs})
    state = {
        row["doc_id"]: row
        for row in read_rows(
            docstate, "doc_id", doc_ids, ["doc_id", "updated_at", "interval", "content_hash", "deleted"]
        )
    }
    plan = plan_documents(docs, tombs, interval, state)
    tick = lap("plan", tick)

    # Chunk the winning documents and diff against what is stored for the docs in scope.
    chunker_tokenizer = model.tokenizer
    new_rows: dict[str, dict[str, Any]] = {}
    for doc_id in sorted(plan.upserts):
        doc = plan.upserts[doc_id]
        for chunk in chunk_document(
            doc, chunker_tokenizer, params.chunk, _embedder_id(params), max_seq_length=model.max_seq_length
        ):
            new_rows[chunk.chunk_id] = chunk_row(chunk, doc)
    tick = lap("chunk", tick)

    stored = {
        row["chunk_id"]: row
        for row in read_rows(
            table, "doc_id", plan.scope, ["chunk_id", "doc_id", "content_hash", "row_hash", VECTOR_COLUMN]
        )
    }
    vector_by_hash = {row["content_hash"]: row[VECTOR_COLUMN] for row in stored.values()}
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    unchanged = 0
    for chunk_id in sorted(new_rows):
        row = new_rows[chunk_id]
        old = stored.get(chunk_id)
        if old is None:
            inserts.append(row)
        elif old["row_hash"] != row["row_hash"]:
            updates.append(row)
        else:
            unchanged += 1
    stale = sorted(set(stored) - set(new_rows))
    tick = lap("diff", tick)

    # Embed only texts whose content hash is not stored yet (each distinct text once).
    to_embed = sorted(
        {
            row["content_hash"]: row["text"] for row in inserts + updates if row["content_hash"] not in vector_by_hash
        }.items()
    )
    vectors = embed_texts(model, [text for _, text in to_embed], params)
    vector_by_hash.update({content_hash: vector for (content_hash, _), vector in zip(to_embed, vectors, strict=True)})
    for row in inserts + updates:
        row[VECTOR_COLUMN] = vector_by_hash[row["content_hash"]]
    tick = lap("embed", tick)

    result = SyncResult(
        table_name=name,
        interval=interval,
        version=previous_version,
        previous_version=previous_version,
        wrote=False,
        docs_upserted=plan.docs_upserted,
        docs_deleted=plan.docs_deleted,
        docs_skipped_older=plan.docs_skipped_older,
        docs_unchanged=plan.docs_unchanged,
        chunks_embedded=len(to_embed),
        chunks_inserted=len(inserts),
        chunks_updated=len(updates),
        chunks_deleted=len(stale),
        chunks_unchanged=unchanged,
        timings=timings,
    )

    if inserts or updates or stale:
        source = pa.Table.from_pylist(inserts + updates, schema=table.schema)
        builder = (
            table.merge_insert("chunk_id")
            .when_matched_update_all(where="target.row_hash != source.row_hash")
            .when_not_matched_insert_all()
        )
        if stale:
            # Scoped twice: only chunk ids of this drop's documents that are no longer produced.
            builder = builder.when_not_matched_by_source_delete(
                f"{in_list('doc_id', plan.scope)} AND {in_list('chunk_id', stale)}"
            )
        merged = builder.execute(source)
        expected = (len(inserts), len(updates), len(stale))
        actual = (merged.num_inserted_rows, merged.num_updated_rows, merged.num_deleted_rows)
        if actual != expected:
            raise TransientError(
                f"LanceDB merge into {name} (version {merged.version}) reported inserted/updated/deleted="
                f"{actual}, the diff expected {expected}; the candidate is unusable. A retry recomputes the diff "
                "against the stored rows; if it persists, check for a concurrent writer or a scalar index on chunk_id."
            )
        result.wrote = True
        tick = lap("write", tick)

    if plan.state_rows:
        # After the chunks: a crash in between leaves the state behind, and a re-run catches up.
        state_table = pa.Table.from_pylist(plan.state_rows, schema=docstate_schema())
        docstate.merge_insert("doc_id").when_matched_update_all().when_not_matched_insert_all().execute(state_table)
        tick = lap("docstate", tick)

    rows_total = table.count_rows()
    result.vector_index = _ensure_vector_index(table, params, rows_total)
    if result.wrote:
        syncs = _open_or_create(db, name + SYNCS_SUFFIX, syncs_schema())
        writes = syncs.count_rows() + 1
        if writes % params.index.optimize_every_n_writes == 0:
            # Compaction + folding new rows into the FTS/vector indexes; never prunes (see _NO_PRUNE).
            table.optimize(cleanup_older_than=_NO_PRUNE)
            result.optimized = True
        counts = {key: value for key, value in result.to_dict().items() if key.startswith(("docs_", "chunks_"))}
        ledger = {
            "sync_id": f"{interval}@{table.version}",
            "interval": interval,
            "table_version": table.version,
            "counts": json.dumps(counts, sort_keys=True),
        }
        syncs.merge_insert("sync_id").when_not_matched_insert_all().execute(
            pa.Table.from_pylist([ledger], schema=syncs_schema())
        )
    tick = lap("index", tick)

    result.version = table.version
    result.rows_total = rows_total
    timings["total"] = round(time.perf_counter() - started, 4)
    log.info(
        "kb sync %s into %s: v%s -> v%s, %s embedded, +%s ~%s -%s chunks, %.2fs",
        interval, name, previous_version, result.version, result.chunks_embedded,
        result.chunks_inserted, result.chunks_updated, result.chunks_deleted, timings["total"],
    )  # fmt: skip
    return result


def _embedder_id(params: Params) -> str:
    from evertune.models.embedder import embedder_id

    return embedder_id(params.embed)


def published_version(table: Any, tag: str) -> int | None:
    """The version a tag points at, or ``None`` when the tag does not exist."""
    tags = table.tags.list()
    entry = tags.get(tag)
    if entry is None:
        return None
    return int(entry["version"] if isinstance(entry, dict) else entry.version)


def read_table_rows(table: Any, columns: Sequence[str]) -> list[dict[str, Any]]:
    """All rows of a table (or its checked-out version), selected columns only."""
    return table.search().select(list(columns)).limit(None).to_arrow().to_pylist()

"""The LanceDB tables of the knowledge base: names, schemas, identity, connection and row reads.

A chunk table ``T`` (one per prefix, chunker and embedder) has three companion tables, ``T__docstate``,
``T__syncs`` and ``T__publish_log``; their layouts are defined here once (the publish log's in
:mod:`evertune.kb.publish`). The chunk table records its identity (embedder, dimension, normalisation,
chunker, schema version) in its schema metadata, and every reader and writer checks it before use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import ConfigError
from evertune.kb.chunking import chunker_id

if TYPE_CHECKING:
    import pyarrow as pa

    from evertune.config import Params
    from evertune.settings import Settings

SCHEMA_VERSION = "1"
DOCSTATE_SUFFIX = "__docstate"
SYNCS_SUFFIX = "__syncs"
VECTOR_COLUMN = "vector"
DISTANCE = "cosine"
_IN_BATCH = 256

META_SCHEMA_VERSION = "evertune.schema_version"
META_EMBEDDER_ID = "evertune.embedder_id"
META_EMBED_MODEL = "evertune.embed_model"
META_DIM = "evertune.embedding_dim"
META_NORMALIZE = "evertune.normalize"
META_CHUNKER_ID = "evertune.chunker_id"
#: The metadata keys that must match the configuration (the model spelling itself may change).
IDENTITY_KEYS = (META_SCHEMA_VERSION, META_EMBEDDER_ID, META_DIM, META_NORMALIZE, META_CHUNKER_ID)


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


def open_or_create(db: Any, name: str, schema: pa.Schema) -> Any:
    """Open a table, creating it empty with ``schema`` when it does not exist."""
    table = open_table(db, name)
    return table if table is not None else db.create_table(name, schema=schema, exist_ok=True)


def published_version(table: Any, tag: str) -> int | None:
    """The version a tag points at, or ``None`` when the tag does not exist."""
    tags = table.tags.list()
    entry = tags.get(tag)
    if entry is None:
        return None
    return int(entry["version"] if isinstance(entry, dict) else entry.version)


# ------------------------------------------------------------------------------------------ identity


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
        for key in IDENTITY_KEYS
        if meta.get(key) != want[key]
    ]
    if problems:
        raise ConfigError(f"LanceDB table {table.name!r} does not match the configuration: " + "; ".join(problems))
    return meta


# ------------------------------------------------------------------------------------------ schemas


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
    """Open the chunk table (checking its identity) or create it empty.

    The full-text index is not created here: built on an empty table it indexes nothing, so the sync builds
    it after the first data load (:func:`evertune.kb.indexes.ensure_fts_index`).
    """
    name = table_name_for(params)
    table = open_table(db, name)
    if table is None:
        table = db.create_table(name, schema=chunk_schema(params, dim), exist_ok=True)
    check_table_identity(table, params, dim)
    return table


# ------------------------------------------------------------------------------------------ reads


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


def read_table_rows(table: Any, columns: Sequence[str]) -> list[dict[str, Any]]:
    """All rows of a table (or its checked-out version), selected columns only."""
    return table.search().select(list(columns)).limit(None).to_arrow().to_pylist()

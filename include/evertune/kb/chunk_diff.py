"""Stored chunk rows: the row of a chunk, a drop's diff against the stored rows, and the merge that applies it.

A row's ``row_hash`` covers every stored field but the vector, so an unchanged row is recognised without
comparing vectors, and a row whose text is unchanged keeps its stored vector (keyed on ``content_hash``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evertune.errors import TransientError
from evertune.kb.table import VECTOR_COLUMN, in_list

if TYPE_CHECKING:
    from evertune.kb.chunking import Chunk


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


@dataclass
class ChunkDiff:
    """The chunk rows of a drop against what is stored for its documents."""

    inserts: list[dict[str, Any]]  # chunk ids not stored yet
    updates: list[dict[str, Any]]  # stored chunk ids whose row changed
    stale: list[str]  # stored chunk ids of the drop's documents that are no longer produced
    unchanged: int

    @property
    def changed(self) -> bool:
        """Whether merging this diff writes anything."""
        return bool(self.inserts or self.updates or self.stale)


def diff_chunks(new_rows: dict[str, dict[str, Any]], stored: dict[str, dict[str, Any]]) -> ChunkDiff:
    """Compare the chunk rows a drop produces with the stored rows of the same documents.

    Args:
        new_rows: ``chunk_id -> row`` (:func:`chunk_row`) of the drop's winning documents.
        stored: ``chunk_id -> row`` (at least ``row_hash``) stored for the documents in the drop's scope.

    Returns:
        Inserts and updates (by chunk id), stale chunk ids (sorted) and the number of unchanged rows.
    """
    diff = ChunkDiff(inserts=[], updates=[], stale=sorted(set(stored) - set(new_rows)), unchanged=0)
    for chunk_id in sorted(new_rows):
        row, old = new_rows[chunk_id], stored.get(chunk_id)
        if old is None:
            diff.inserts.append(row)
        elif old["row_hash"] != row["row_hash"]:
            diff.updates.append(row)
        else:
            diff.unchanged += 1
    return diff


def merge_chunks(table: Any, diff: ChunkDiff, scope: list[str]) -> None:
    """Apply a diff (rows with their vectors) in one ``merge_insert``, one table version, and check the counts.

    Args:
        table: The chunk table at its latest version.
        diff: What to write; inserts and updates carry their vectors.
        scope: The drop's doc ids: deletes never reach chunks of other documents.

    Raises:
        TransientError: LanceDB's merge counts disagree with the diff (e.g. a concurrent writer).
    """
    import pyarrow as pa

    source = pa.Table.from_pylist(diff.inserts + diff.updates, schema=table.schema)
    builder = (
        table.merge_insert("chunk_id")
        .when_matched_update_all(where="target.row_hash != source.row_hash")
        .when_not_matched_insert_all()
    )
    if diff.stale:
        # Scoped twice: only chunk ids of this drop's documents that are no longer produced.
        builder = builder.when_not_matched_by_source_delete(
            f"{in_list('doc_id', scope)} AND {in_list('chunk_id', diff.stale)}"
        )
    merged = builder.execute(source)
    expected = (len(diff.inserts), len(diff.updates), len(diff.stale))
    actual = (merged.num_inserted_rows, merged.num_updated_rows, merged.num_deleted_rows)
    if actual != expected:
        raise TransientError(
            f"LanceDB merge into {table.name} (version {merged.version}) reported inserted/updated/deleted="
            f"{actual}, the diff expected {expected}; the candidate is unusable. A retry recomputes the diff "
            "against the stored rows; if it persists, check for a concurrent writer or a scalar index on chunk_id."
        )

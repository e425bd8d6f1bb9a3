"""The sharded refresh: a sync's embedding spread over workers, merged into LanceDB by one writer.

Three steps replace the embedding in the middle of :func:`evertune.kb.index.sync_interval`:

1. **plan** (:func:`plan_shards`): :func:`~evertune.kb.index.prepare_sync` finds the texts without a stored
   vector; each goes to shard ``int(content_hash[:16], 16) % index.embed_shards``, and every shard's texts
   (sorted by hash) are written to the staging area as ``texts.parquet``. Nothing touches LanceDB. There are
   always ``index.embed_shards`` shards, empty ones included, so a mapped task never expands to nothing.
2. **embed** (:func:`embed_shard`, one Airflow mapped task per shard): the shard's texts go through the same
   :func:`~evertune.kb.embedding.embed_texts` as an unsharded sync; the vectors are written next to them as
   ``vectors.parquet`` (content hash, vector). A shard whose vectors are already there is not embedded again.
3. **merge** (:func:`merge_shards`): one writer runs :func:`~evertune.kb.index.prepare_sync` again, so the diff
   is computed against what is really stored (a retry after a crash recomputes it), takes each pending text's
   vector from the shards and runs :func:`~evertune.kb.index.finish_sync`: one ``merge_insert`` commit with the
   scoped deletes and the MergeResult check, then the document state and the indexes. ``production`` moves
   only in the later publish step, so a merge that dies midway leaves it where it was.

The staging folder is keyed on content (the table and the sorted pending hashes), under the interval's
scratch folder: every worker must see it (a shared volume in the distributed topology). With one shard the
texts are embedded in the same order and batches as an unsharded sync, so the table is exactly today's.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.kb.embedding import embed_texts

if TYPE_CHECKING:
    from evertune.config import Params
    from evertune.kb.index import PreparedSync, SyncResult
    from evertune.settings import Settings

log = logging.getLogger(__name__)

TEXTS_FILE = "texts.parquet"
VECTORS_FILE = "vectors.parquet"


@dataclass(frozen=True)
class ShardRef:
    """One shard of a sync's embedding (the plan task's XCom element, self-contained).

    Attributes:
        interval: The data interval date.
        table_name: The chunk table the vectors are for.
        index: The shard's number, ``0 .. count - 1``.
        count: The number of shards of the plan.
        texts: How many texts the shard holds.
        path: The shard's staging folder.
        plan_key: The content key of the plan (sha256 of the table name and the sorted pending hashes).
    """

    interval: str
    table_name: str
    index: int
    count: int
    texts: int
    path: str
    plan_key: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (XCom, receipts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardRef:
        """Rebuild a reference from :meth:`to_dict` output (extra keys, e.g. an embed result's, are ignored)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def shard_of(content_hash: str, count: int) -> int:
    """The shard of a text: its content hash (hex sha256) modulo the shard count."""
    return int(content_hash[:16], 16) % count


def _write_parquet(path: Path, columns: dict[str, list[Any]], schema: Any) -> None:
    """Write a parquet file atomically (temporary file, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(columns, schema=schema), tmp)
    tmp.replace(path)


def _texts_schema() -> Any:
    import pyarrow as pa

    return pa.schema([pa.field("content_hash", pa.string()), pa.field("text", pa.string())])


def _vectors_schema(dim: int) -> Any:
    import pyarrow as pa

    return pa.schema([pa.field("content_hash", pa.string()), pa.field("vector", pa.list_(pa.float32(), dim))])


def plan_shards(prepared: PreparedSync, count: int, staging: Path) -> list[ShardRef]:
    """Split a prepared sync's pending texts into ``count`` content-hash shards and stage each one's texts.

    Args:
        prepared: :func:`evertune.kb.index.prepare_sync`'s result.
        count: ``index.embed_shards``.
        staging: The interval's shard staging folder (the plan's folder is created under it).

    Returns:
        One :class:`ShardRef` per shard, in shard order (empty shards included).
    """
    pending = prepared.pending()
    table_name = prepared.table.name
    digest = hashlib.sha256(table_name.encode())
    for content_hash, _ in pending:
        digest.update(content_hash.encode())
    plan_key = digest.hexdigest()
    folder = staging / f"{plan_key[:16]}-of-{count}"
    buckets: list[list[tuple[str, str]]] = [[] for _ in range(count)]
    for content_hash, text in pending:
        buckets[shard_of(content_hash, count)].append((content_hash, text))
    refs = []
    for index, bucket in enumerate(buckets):
        path = folder / f"shard-{index:03d}"
        texts_file = path / TEXTS_FILE
        if not texts_file.is_file():  # content-keyed: a re-plan of the same texts finds them staged
            columns = {"content_hash": [h for h, _ in bucket], "text": [t for _, t in bucket]}
            _write_parquet(texts_file, columns, _texts_schema())
        refs.append(ShardRef(prepared.interval, table_name, index, count, len(bucket), str(path), plan_key))
    log.info("planned %d texts of %s into %d shards (%s) under %s", len(pending), prepared.interval, count,
             [len(bucket) for bucket in buckets], folder)
    return refs


def _read(path: Path) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def embed_shard(ref: ShardRef, model: Any, params: Params) -> dict[str, Any]:
    """Embed one shard's staged texts and stage their vectors (skipped when they are staged already).

    Args:
        ref: The shard.
        model: The checked embedder (:func:`evertune.kb.embedding.load_checked_embedder`).
        params: Pipeline params (``embed``).

    Returns:
        The shard reference plus ``embedded`` (texts embedded now), ``reused`` (vectors were staged already)
        and ``seconds`` (the embedding's wall time).
    """
    folder = Path(ref.path)
    texts = _read(folder / TEXTS_FILE)
    vectors_file = folder / VECTORS_FILE
    if vectors_file.is_file() and _read(vectors_file)["content_hash"] == texts["content_hash"]:
        return {**ref.to_dict(), "embedded": 0, "reused": True, "seconds": 0.0}
    started = time.perf_counter()
    vectors = embed_texts(model, texts["text"], params)
    seconds = round(time.perf_counter() - started, 4)
    dim = int(model.get_embedding_dimension())
    _write_parquet(vectors_file, {"content_hash": texts["content_hash"], "vector": vectors}, _vectors_schema(dim))
    log.info("embedded shard %d/%d of %s: %d texts in %.2fs", ref.index + 1, ref.count, ref.interval,
             len(vectors), seconds)
    return {**ref.to_dict(), "embedded": len(vectors), "reused": False, "seconds": seconds}


def staged_vectors(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """``content_hash -> vector`` of every embedded shard (a shard without staged vectors adds nothing)."""
    vectors: dict[str, Any] = {}
    for shard in shards:
        path = Path(ShardRef.from_dict(shard).path) / VECTORS_FILE
        if not path.is_file():
            log.warning("shard %s has no staged vectors (%s): the merge embeds its texts", shard.get("index"), path)
            continue
        columns = _read(path)
        vectors.update(zip(columns["content_hash"], columns["vector"], strict=True))
    return vectors


def merge_shards(
    validated_dir: Path, interval: str, shards: list[dict[str, Any]], params: Params, settings: Settings
) -> SyncResult:
    """The one writer: diff against the stored rows again and merge it with the shards' vectors in one commit.

    Args:
        validated_dir: The interval's validated folder.
        interval: The data interval date.
        shards: The embed results (or plain :class:`ShardRef` dicts) of every shard.
        params: Pipeline params.
        settings: Deployment settings.

    Returns:
        :func:`evertune.kb.index.finish_sync`'s result; ``timings`` adds ``shards_max`` and ``shards_sum``, the
        longest and the total embedding time of the shards (seconds).
    """
    from evertune.kb.index import finish_sync, prepare_sync

    prepared = prepare_sync(validated_dir, interval, params, settings)
    vectors = staged_vectors(shards)
    prepared.laps.lap("read_shards")
    result = finish_sync(prepared, params, vectors)
    seconds = [float(shard.get("seconds", 0.0)) for shard in shards]
    result.timings.update(shards_max=max(seconds, default=0.0), shards_sum=round(sum(seconds), 4))
    return result

"""Search the knowledge base and measure retrieval quality on golden queries.

Readers always pass through :func:`search`, which opens an exact table version or tag (by default the
publish tag), so a sync that has not been published yet is never visible to them. Evaluation runs the
same code path against a pinned version, so the gate measures what readers would get.

Per query, :func:`search` resolves the tag to its version (one read of the table's tags) and reuses the
table checked out at that version, identity already checked, from a small per-process cache: versions are
immutable, so only a tag move opens and checks a table again. Call :func:`clear_table_cache` after
dropping and re-creating a table under the same name in a running process. Vector and hybrid queries carry
the tuned query-time ANN settings (``index.vector_probe_fraction`` / ``index.vector_refine_factor``, see
:func:`ann_settings`); on a table below the vector-index threshold LanceDB searches exactly and ignores them.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evertune.errors import ConfigError, NothingToDo
from evertune.kb.indexes import FTS_COLUMN, vector_index_partitions
from evertune.kb.table import (
    DISTANCE,
    VECTOR_COLUMN,
    check_table_identity,
    connect,
    expected_metadata,
    open_table,
    published_version,
    table_name_for,
)

if TYPE_CHECKING:
    from evertune.config import Params
    from evertune.kb.golden import GoldenEvaluationSet
    from evertune.settings import Settings

MODES = ("hybrid", "vector", "fts")
RESULT_COLUMNS = ["chunk_id", "doc_id", "ordinal", "title", "text", "body", "url", "source", "doc_updated_at"]
#: Chunks fetched per wanted document, so that de-duplicating by document still fills k slots.
FETCH_PER_DOC = 4
#: Checked-out table versions kept open per process (the live one, plus a few recently replaced).
PINNED_CACHE_SIZE = 4

_CACHE_LOCK = threading.Lock()
_HEADS: dict[tuple[str, str], Any] = {}  # (uri, table) -> a handle used to read tags
_PINNED: OrderedDict[tuple[Any, ...], Any] = OrderedDict()  # (uri, table, version, identity) -> checked out


def _open_version(params: Params, settings: Settings, version_or_tag: int | str | None, table_name: str | None = None):
    """Open the chunk table checked out at a version, a tag or (``None``/``"latest"``) the latest version."""
    db = connect(settings)
    name = table_name or table_name_for(params)
    table = open_table(db, name)
    if table is None:
        raise NothingToDo(f"knowledge-base table {name!r} does not exist yet (nothing synced)")
    if version_or_tag is None or version_or_tag == "latest":
        return table
    if isinstance(version_or_tag, str) and not version_or_tag.isdigit():
        if published_version(table, version_or_tag) is None:
            raise NothingToDo(f"table {name!r} has no tag {version_or_tag!r} (nothing published yet)")
        table.checkout(version_or_tag)
        return table
    table.checkout(int(version_or_tag))
    return table


def clear_table_cache() -> None:
    """Forget every cached table handle of :func:`search` (the next query opens and checks afresh)."""
    with _CACHE_LOCK:
        _HEADS.clear()
        _PINNED.clear()


def _tag_version(settings: Settings, name: str, tag: str) -> int:
    """The version ``tag`` points at now, read through a cached handle of the table."""
    key = (settings.lancedb_uri, name)
    with _CACHE_LOCK:
        head = _HEADS.get(key)
    if head is None:
        head = open_table(connect(settings), name)
        if head is None:
            raise NothingToDo(f"knowledge-base table {name!r} does not exist yet (nothing synced)")
        with _CACHE_LOCK:
            _HEADS[key] = head
    version = published_version(head, tag)  # tags are read from storage on every call, never cached
    if version is None:
        raise NothingToDo(f"table {name!r} has no tag {tag!r} (nothing published yet)")
    return version


def _pinned_table(params: Params, settings: Settings, version_or_tag: int | str) -> tuple[Any, int | None]:
    """The chunk table checked out at a version or a tag's version, identity checked once per version.

    Returns:
        The table and the IVF partitions of its ANN index (``None`` without one), both cached per version.

    Raises:
        NothingToDo: The table or the tag does not exist.
        ConfigError: The table was built with another embedder or chunker.
    """
    name = table_name_for(params)
    if isinstance(version_or_tag, str) and not version_or_tag.isdigit():
        version = _tag_version(settings, name, version_or_tag)
    else:
        version = int(version_or_tag)
    identity = tuple(sorted(expected_metadata(params, 0).items()))
    key = (settings.lancedb_uri, name, version, identity)
    with _CACHE_LOCK:
        cached = _PINNED.get(key)
        if cached is not None:
            _PINNED.move_to_end(key)
            return cached
    table = _open_version(params, settings, version, name)
    check_table_identity(table, params)
    cached = (table, vector_index_partitions(table))
    with _CACHE_LOCK:
        _PINNED[key] = cached
        while len(_PINNED) > PINNED_CACHE_SIZE:
            _PINNED.popitem(last=False)
    return cached


def _query_vectors(queries: list[str], params: Params) -> list[list[float]]:
    from evertune.kb.embedding import embed_queries

    return embed_queries(queries, params)


def ann_settings(params: Params, partitions: int | None) -> dict[str, int]:
    """Query-time ANN settings for an index of ``partitions`` IVF partitions (``None``: no or an unnamed index).

    ``nprobes`` is ``ceil(index.vector_probe_fraction x partitions)``, so the share of the data searched, and
    with it recall, holds when a rebuild for a grown table adds partitions; ``refine_factor`` is
    ``index.vector_refine_factor`` (left out at 0). LanceDB ignores both on a table without a vector index.
    """
    settings = {}
    if partitions:
        settings["nprobes"] = max(1, math.ceil(params.index.vector_probe_fraction * partitions - 1e-9))
    if params.index.vector_refine_factor:
        settings["refine_factor"] = params.index.vector_refine_factor
    return settings


def _tune(builder: Any, ann: dict[str, int] | None) -> Any:
    for name, value in (ann or {}).items():
        builder = getattr(builder, name)(value)
    return builder


def _run_query(
    table: Any,
    query: str,
    vector: list[float] | None,
    mode: str,
    limit: int,
    vector_weight: float = 0.7,
    ann: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """One LanceDB query and its rows; ``ann`` holds query-time ANN settings (:func:`ann_settings`)."""
    from lancedb.rerankers import LinearCombinationReranker

    if mode == "vector":
        builder = table.search(vector, query_type="vector", vector_column_name=VECTOR_COLUMN).distance_type(DISTANCE)
        builder = _tune(builder, ann)
    elif mode == "fts":
        builder = table.search(query, query_type="fts", fts_columns=FTS_COLUMN)
    elif mode == "hybrid":
        builder = (
            table.search(query_type="hybrid", vector_column_name=VECTOR_COLUMN, fts_columns=FTS_COLUMN)
            .vector(vector)
            .text(query)
            .distance_type(DISTANCE)
            # Score fusion rather than LanceDB's default rank fusion (RRF): measured on the demo corpus, RRF let
            # every batch of new articles push golden hits down (MRR -0.08 on the drift day), fusion -0.03.
            .rerank(LinearCombinationReranker(weight=vector_weight))
        )
        builder = _tune(builder, ann)
    else:
        raise ConfigError(f"search mode must be one of {MODES}, got {mode!r}")
    # No .select(): with an explicit projection Lance warns on every query about auto-projected score columns.
    rows = builder.limit(limit).to_list()
    results = []
    for rank, row in enumerate(rows, start=1):
        score = row.get("_relevance_score", row.get("_score"))
        if score is None and row.get("_distance") is not None:
            score = 1.0 - float(row["_distance"])  # cosine distance -> similarity
        results.append({**{key: row.get(key) for key in RESULT_COLUMNS}, "score": score, "rank": rank})
    return results


def _dedupe_docs(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row["doc_id"] in seen:
            continue
        seen.add(row["doc_id"])
        kept.append({**row, "rank": len(kept) + 1})
        if len(kept) == k:
            break
    return kept


def search(
    query: str,
    params: Params,
    settings: Settings,
    *,
    k: int | None = None,
    mode: str | None = None,
    version_or_tag: int | str | None = "production",
    dedupe_docs: bool = False,
) -> list[dict[str, Any]]:
    """Retrieve the best chunks for a query from a pinned version of the knowledge base.

    Args:
        query: The user's question.
        params: Pipeline params (``embed``, ``chunk``, ``index``, ``retrieval``).
        settings: Deployment settings.
        k: Results to return (default ``retrieval.k``).
        mode: ``hybrid`` (vector and full-text results merged by LanceDB's ``LinearCombinationReranker``: a
            weighted sum of the two scores, ``retrieval.hybrid_vector_weight`` on the vector side), ``vector``
            or ``fts``; default ``retrieval.mode``.
        version_or_tag: ``"production"`` (read as ``index.publish_tag``), another tag, a version number,
            or ``"latest"``/``None`` for the unpublished head.
        dedupe_docs: Keep only the best chunk of each document.

    Returns:
        Dicts with chunk_id, doc_id, ordinal, title, text (title + body: what was embedded, the passage to
        show a model), body (the document slice alone), url, source, doc_updated_at, score, rank.

    Raises:
        NothingToDo: The table or the tag does not exist yet.
        ConfigError: The table was built with another embedder/chunker, or the mode is unknown.
    """
    k = k or params.retrieval.k
    mode = mode or params.retrieval.mode
    if version_or_tag == "production":
        version_or_tag = params.index.publish_tag
    if version_or_tag is None or version_or_tag == "latest":
        table = _open_version(params, settings, version_or_tag)  # the head moves: never cached
        check_table_identity(table, params)
        partitions = vector_index_partitions(table)
    else:
        table, partitions = _pinned_table(params, settings, version_or_tag)
    vector = _query_vectors([query], params)[0] if mode != "fts" else None
    limit = k * FETCH_PER_DOC if dedupe_docs else k
    ann = ann_settings(params, partitions)
    rows = _run_query(table, query, vector, mode, limit, params.retrieval.hybrid_vector_weight, ann)
    return _dedupe_docs(rows, k) if dedupe_docs else rows


def load_golden(golden_path: str | Path) -> list[dict[str, Any]]:
    """Read golden retrieval queries (``{query_id, query, relevant_doc_ids}`` per line).

    Raises:
        ConfigError: The file is missing or a line is malformed.
    """
    path = Path(golden_path)
    if not path.is_file():
        raise ConfigError(f"golden retrieval file not found: {path}")
    queries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            queries.append(
                {
                    "query_id": str(item["query_id"]),
                    "query": str(item["query"]),
                    "relevant_doc_ids": [str(doc) for doc in item["relevant_doc_ids"]],
                }
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{number}: malformed golden query ({exc})") from None
    return queries


def _score_version(table: Any, golden: list[dict[str, Any]], vectors: list[Any], params: Params) -> dict[str, Any]:
    k = params.retrieval.k
    mode = params.retrieval.mode
    recalls, reciprocal_ranks, misses = [], [], []
    started = time.perf_counter()
    ann = ann_settings(params, vector_index_partitions(table))
    for item, vector in zip(golden, vectors, strict=True):
        ranked = _dedupe_docs(
            _run_query(table, item["query"], vector, mode, k * FETCH_PER_DOC, params.retrieval.hybrid_vector_weight, ann),
            k,
        )
        doc_ids = [row["doc_id"] for row in ranked]
        relevant = set(item["relevant_doc_ids"])
        hits = relevant.intersection(doc_ids)
        recall = len(hits) / len(relevant)
        first = next((rank for rank, doc_id in enumerate(doc_ids, start=1) if doc_id in relevant), None)
        recalls.append(recall)
        reciprocal_ranks.append(1.0 / first if first else 0.0)
        if recall < 1.0:
            misses.append({"query_id": item["query_id"], "recall": recall, "retrieved": doc_ids})
    n = len(recalls)
    return {
        "version": table.version,
        "n_queries": n,
        "recall_at_k": sum(recalls) / n if n else None,
        "mrr": sum(reciprocal_ranks) / n if n else None,
        "misses": misses,
        "seconds": round(time.perf_counter() - started, 4),
    }


def _golden_queries(golden: str | Path | GoldenEvaluationSet) -> tuple[list[dict[str, Any]], str]:
    """The queries to score and their sha256: a file's bytes, or a fitted set's ``version`` (its canonical bytes)."""
    if isinstance(golden, str | Path):
        path = Path(golden)
        return load_golden(path), hashlib.sha256(path.read_bytes()).hexdigest()
    queries = [{"query_id": str(item["query_id"]), "query": str(item["query"]),
                "relevant_doc_ids": [str(doc) for doc in item["relevant_doc_ids"]]} for item in golden.items]
    return queries, golden.version


def evaluate_retrieval(
    table_name: str, version: int, golden_path: str | Path | GoldenEvaluationSet, params: Params, settings: Settings
) -> dict[str, Any]:
    """Measure recall@k and MRR of the golden queries on a candidate version and on the published one.

    Relevance is per document: a hit is any chunk of a relevant document, and rankings are de-duplicated
    by document before cutting at ``retrieval.k``. Queries without relevant documents are ignored.

    Args:
        table_name: The chunk table (``SyncResult.table_name``).
        version: The candidate version (``SyncResult.version``), checked out exactly.
        golden_path: A golden retrieval file (``{query_id, query, relevant_doc_ids}`` per line), or the carried set
            fitted to the documents (:class:`~evertune.kb.golden.GoldenEvaluationSet`, see
            :func:`evertune.kb.golden_carry.carried_golden`); ``golden_sha256`` is then the set's ``version``.
        params: Pipeline params (``retrieval.k``, ``retrieval.mode``, ``embed``, ``index.publish_tag``).
        settings: Deployment settings.

    Returns:
        ``{"table", "k", "mode", "golden_sha256", "candidate": {...}, "published": {...} | None}`` where each
        side holds version, n_queries, recall_at_k, mrr, misses and seconds.
    """
    queries, golden_sha256 = _golden_queries(golden_path)
    golden = [item for item in queries if item["relevant_doc_ids"]]
    candidate_table = _open_version(params, settings, int(version), table_name)
    check_table_identity(candidate_table, params)
    vectors: list[Any] = [None] * len(golden)
    if params.retrieval.mode != "fts" and golden:
        vectors = _query_vectors([item["query"] for item in golden], params)
    report: dict[str, Any] = {
        "table": table_name,
        "k": params.retrieval.k,
        "mode": params.retrieval.mode,
        "golden_sha256": golden_sha256,
        "candidate": _score_version(candidate_table, golden, vectors, params),
        "published": None,
    }
    head = _open_version(params, settings, None, table_name)
    live = published_version(head, params.index.publish_tag)
    if live is not None:
        head.checkout(live)
        report["published"] = _score_version(head, golden, vectors, params)
    return report

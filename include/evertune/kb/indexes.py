"""The search indexes of a chunk table: the full-text index, the ANN vector index, periodic compaction.

Full-text index. LanceDB (0.40) indexes only the rows present when the index is built or optimised; rows
written later are flat-scanned by every full-text query (slow) and skipped by ``fast_search``. So the sync
builds the index after the first data load (never on an empty table) and, after every write, rebuilds it
(``create_index(..., replace=True)``) whenever ``index_stats`` reports unindexed rows. Measured (5 writes of 5% edits + 5% inserts + 2 deletes, 2
shared cores), per write: on 2,000 rows a rebuild cost 69-144 ms and one table version, ``optimize()`` 62 ms
the first time and 176-237 ms (three versions: it also compacts) after; on 20,000 rows 711-844 ms against
301 ms, then 806-1003 ms. Both leave no unindexed rows; on 20,000 rows full-text queries ran in 4.8 ms on the
rebuilt single-segment index and in 9.1 ms on the incrementally optimised one.

Vector index. Below ``index.vector_index_min_rows`` search is exact (no index). Above it, one ANN index
(``index.vector_index_type``, partitions sized by ``index.vector_rows_per_partition``) whose name records its
settings and the row count it was built on; it is rebuilt when the settings change or the table has grown
past ``index.vector_rebuild_growth`` times that count. Rows written after the build are searched exactly
until the next ``optimize()`` or rebuild folds them in (correct, a little slower). Queries probe
``index.vector_probe_fraction`` of the partitions (so recall holds when a rebuild adds partitions) and
re-rank ``index.vector_refine_factor`` x k candidates exactly. The parameters come from a measured curve (``python -m bench kb_query_scale``,
docs/benchmarks.md section 3c).

Versions are never pruned here: LanceDB raises when a tagged version would be pruned, and a rollback may
return to any previously published version (most of them untagged), so pruning is a deliberate
maintenance step, not part of the nightly sync.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

from evertune.errors import TransientError
from evertune.kb.table import DISTANCE, VECTOR_COLUMN

if TYPE_CHECKING:
    from evertune.config import Params

FTS_COLUMN = "text"
FTS_INDEX_NAME = "text_fts"
#: Names given by :func:`vector_index_spec`: kind, partitions, PQ sub-vectors (IVF_PQ), rows at build.
_VECTOR_NAME = re.compile(rf"{VECTOR_COLUMN}_(?P<kind>[a-z_]+?)_p(?P<p>\d+)(?:_s(?P<s>\d+))?_n(?P<n>\d+)")
#: ``optimize()`` prunes versions older than its ``cleanup_older_than`` (7 days by default): never, here.
NO_PRUNE = dt.timedelta(days=36500)


def fts_index_name(table: Any) -> str | None:
    """Name of the full-text index on :data:`FTS_COLUMN`, or ``None`` when there is none.

    Tables built before the index had an explicit name carry LanceDB's default name; that one is kept.
    """
    for index in table.list_indices():
        if index.index_type == "FTS" and list(index.columns) == [FTS_COLUMN]:
            return index.name
    return None


def fts_unindexed_rows(table: Any) -> int | None:
    """Rows the full-text index does not cover yet, or ``None`` when the table has no full-text index."""
    name = fts_index_name(table)
    if name is None:
        return None
    stats = table.index_stats(name)
    return int(stats.num_unindexed_rows) if stats is not None else None


def ensure_fts_index(table: Any, rows: int) -> bool:
    """Make the full-text index cover every row: build it, or rebuild it when rows are unindexed.

    An empty table gets no index (it would index nothing); the first sync that loads rows builds it. A
    table whose index already covers every row is left alone, so an empty diff writes no version.

    Args:
        table: The chunk table, at its latest version (not checked out).
        rows: Its row count.

    Returns:
        True when the index was built or rebuilt (one new table version).

    Raises:
        TransientError: Rows are still unindexed after the rebuild (e.g. a concurrent writer added rows).
    """
    from lancedb.index import FTS

    name = fts_index_name(table)
    if name is None:
        if rows == 0:
            return False
        name = FTS_INDEX_NAME
    elif not fts_unindexed_rows(table):
        return False
    table.create_index(FTS_COLUMN, config=FTS(with_position=False), name=name, replace=True)
    left = fts_unindexed_rows(table)
    if left:
        raise TransientError(
            f"full-text index {name} of {table.name} still misses {left} rows after a rebuild (version "
            f"{table.version}); a concurrent writer? A retry rebuilds it."
        )
    return True


def vector_index_names(table: Any) -> list[str]:
    """Names of the vector indexes on :data:`~evertune.kb.table.VECTOR_COLUMN` (normally zero or one)."""
    return sorted(index.name for index in table.list_indices() if list(index.columns) == [VECTOR_COLUMN])


def vector_index_spec(params: Params, rows: int) -> tuple[str, dict[str, Any]]:
    """The name and the build settings of the ANN index that ``params`` give for a table of ``rows`` rows.

    The name records the settings and the row count at build (``vector_ivf_pq_p25_s48_n100000``), so the
    index says what it was tuned for: :func:`ensure_vector_index` rebuilds it when either no longer holds.
    """
    index = params.index
    partitions = max(1, round(rows / index.vector_rows_per_partition))
    if index.vector_index_type == "IVF_PQ":
        settings = {"num_partitions": partitions, "num_sub_vectors": index.vector_num_sub_vectors}
        shape = f"p{partitions}_s{index.vector_num_sub_vectors}"
    else:
        settings = {"num_partitions": partitions}
        shape = f"p{partitions}"
    return f"{VECTOR_COLUMN}_{index.vector_index_type.lower()}_{shape}_n{rows}", settings


def partitions_in_name(name: str) -> int | None:
    """IVF partitions recorded in an index name of :func:`vector_index_spec`, or ``None`` for another name."""
    match = _VECTOR_NAME.fullmatch(name)
    return int(match["p"]) if match else None


def vector_index_partitions(table: Any) -> int | None:
    """IVF partitions of the table's ANN index (from its name); ``None`` without one or for an unnamed one."""
    for name in vector_index_names(table):
        partitions = partitions_in_name(name)
        if partitions is not None:
            return partitions
    return None


def _built_for(name: str, params: Params) -> int | None:
    """Row count an index named by :func:`vector_index_spec` for today's settings was built on, else ``None``.

    ``None`` also for LanceDB's default name (an index built before the name recorded anything).
    """
    match = _VECTOR_NAME.fullmatch(name)
    if match is None:
        return None
    rows = int(match["n"])
    return rows if vector_index_spec(params, rows)[0] == name else None


def ensure_vector_index(table: Any, params: Params, rows: int) -> bool:
    """Build the ANN index once the table is big enough, and rebuild it when the table outgrew it.

    Below ``index.vector_index_min_rows`` exact search is faster and exact, so no index is built. An index is
    kept while its settings match ``params.index`` and the table holds at most ``index.vector_rebuild_growth``
    times the rows it was built on (the partition count was sized for that); otherwise a new one is built
    from ``params`` for today's rows and the old one dropped (two table versions; readers use the tagged
    version, which keeps its index). Calling it again on the same table changes nothing.

    Returns:
        True when the table has a vector index (built now or before).
    """
    from lancedb.index import IvfHnswSq, IvfPq

    current = vector_index_names(table)
    if not current and rows < params.index.vector_index_min_rows:
        return False
    kept = [name for name in current if (built := _built_for(name, params)) is not None
            and rows <= params.index.vector_rebuild_growth * built]  # fmt: skip
    if kept:
        name = kept[0]
    else:
        name, settings = vector_index_spec(params, rows)
        kind = IvfPq if params.index.vector_index_type == "IVF_PQ" else IvfHnswSq
        table.create_index(VECTOR_COLUMN, config=kind(distance_type=DISTANCE, **settings), name=name, replace=True)
    for old in current:
        if old != name:
            table.drop_index(old)  # after the new index exists: the head is never without one
    return True


def optimize_due(writes: int, params: Params) -> bool:
    """Whether the ``writes``-th write of a table compacts it (every ``index.optimize_every_n_writes``)."""
    return writes % params.index.optimize_every_n_writes == 0


def optimize(table: Any) -> None:
    """Compact the table's files and fold new rows into its indexes, never pruning versions."""
    table.optimize(cleanup_older_than=NO_PRUNE)

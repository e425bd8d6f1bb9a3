"""The ANN index on a real LanceDB table: built past the threshold, kept, rebuilt once the table outgrew it.

A small table (16-dim seeded vectors, ``index.vector_index_min_rows`` 256, 64 rows per IVF partition) keeps
every build under a second.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from evertune.config import apply_overrides, load_params
from evertune.kb import indexes
from evertune.kb.retrieval import _run_query, _tune, ann_settings
from evertune.kb.table import chunk_schema, connect, open_or_create_chunk_table
from evertune.settings import get_settings

DIM = 16


@pytest.fixture
def params():
    return apply_overrides(
        load_params(),
        {"index.vector_index_min_rows": 256, "index.vector_rows_per_partition": 64, "index.vector_num_sub_vectors": 2,
         "index.vector_probe_fraction": 0.8, "index.vector_refine_factor": 5, "index.vector_rebuild_growth": 2.0},
    )  # fmt: skip


def rows(start: int, count: int) -> list[dict]:
    vectors = np.random.default_rng(start).normal(size=(count, DIM)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [{"chunk_id": f"c{n}", "doc_id": f"d{n}", "ordinal": 0, "title": f"t{n}", "body": f"word{n % 7} body",
             "text": f"t{n} word{n % 7} body", "vector": vectors[n - start].tolist()}
            for n in range(start, start + count)]  # fmt: skip


@pytest.fixture
def table(tmp_path, evertune_home, params):
    db = connect(get_settings())
    return open_or_create_chunk_table(db, params, DIM)


def add(table, params, start: int, count: int) -> None:
    table.add(pa.Table.from_pylist(rows(start, count), schema=chunk_schema(params, DIM)))


def test_index_is_built_past_the_threshold_kept_then_rebuilt_when_outgrown(table, params) -> None:
    add(table, params, 0, 200)
    assert not indexes.ensure_vector_index(table, params, table.count_rows())
    assert indexes.vector_index_names(table) == []

    add(table, params, 200, 100)  # 300 rows: past the threshold
    assert indexes.ensure_vector_index(table, params, 300)
    assert indexes.vector_index_names(table) == ["vector_ivf_pq_p5_s2_n300"]
    version = table.version
    assert indexes.ensure_vector_index(table, params, 300) and table.version == version  # idempotent

    add(table, params, 300, 300)  # 600 rows = 2x: still the index it was tuned for
    version = table.version
    assert indexes.ensure_vector_index(table, params, 600) and table.version == version
    assert indexes.vector_index_names(table) == ["vector_ivf_pq_p5_s2_n300"]

    add(table, params, 600, 1)  # 601 rows > 2x 300: rebuilt for today's size, the old index dropped
    assert indexes.ensure_vector_index(table, params, 601)
    assert indexes.vector_index_names(table) == ["vector_ivf_pq_p9_s2_n601"]
    assert table.index_stats("vector_ivf_pq_p9_s2_n601").num_unindexed_rows == 0
    version = table.version
    assert indexes.ensure_vector_index(table, params, 601) and table.version == version

    changed = apply_overrides(params, {"index.vector_num_sub_vectors": 4})  # new settings: rebuilt
    assert indexes.ensure_vector_index(table, changed, 601)
    assert indexes.vector_index_names(table) == ["vector_ivf_pq_p9_s4_n601"]


def test_an_index_without_a_recorded_size_is_replaced(table, params) -> None:
    from lancedb.index import IvfPq

    add(table, params, 0, 300)
    table.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=2, num_sub_vectors=2))
    assert indexes.vector_index_names(table) == ["vector_idx"]
    assert indexes.ensure_vector_index(table, params, 300)
    assert indexes.vector_index_names(table) == ["vector_ivf_pq_p5_s2_n300"]


def test_queries_use_the_tuned_nprobes_and_refine_factor(table, params) -> None:
    add(table, params, 0, 400)
    query = rows(0, 1)[0]["vector"]  # the vector of c0 itself
    exact = [row["chunk_id"] for row in _run_query(table, "word0", query, "vector", 5)]
    indexes.ensure_vector_index(table, params, 400)
    indexes.ensure_fts_index(table, 400)
    assert indexes.vector_index_partitions(table) == 6  # 400 rows / 64 per partition
    ann = ann_settings(params, indexes.vector_index_partitions(table))
    assert ann == {"nprobes": 5, "refine_factor": 5}  # ceil(0.8 x 6)
    found = [row["chunk_id"] for row in _run_query(table, "word0", query, "vector", 5, ann=ann)]
    assert found[0] == exact[0] == "c0"  # refine re-ranks with exact distances: the vector itself comes first
    hybrid = _run_query(table, "word0", query, "hybrid", 5, ann=ann)
    assert hybrid and hybrid[0]["chunk_id"] == "c0"
    # The plan of the builder _run_query tunes: 5 partitions probed, 5 x 5 candidates re-ranked exactly.
    plan = _tune(table.search(query, vector_column_name="vector").distance_type("cosine").limit(5), ann)
    text = plan.explain_plan(verbose=True)
    assert "minimum_nprobes=5, maximum_nprobes=Some(5)" in text
    assert "k=25" in text and "KNNVectorDistance" in text

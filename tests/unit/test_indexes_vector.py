"""ANN index naming and query settings (no LanceDB), and the seeded rows of the 100k-chunk benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from evertune.config import apply_overrides, load_params
from evertune.kb import indexes
from evertune.kb.retrieval import ann_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # bench/ is a top-level package of the repository, not installed
    sys.path.insert(0, str(REPO_ROOT))

from bench import kb_query_scale  # noqa: E402 (import after the path set-up above)


def test_index_name_records_settings_and_rows_at_build() -> None:
    params = apply_overrides(load_params(), {"index.vector_rows_per_partition": 4000, "index.vector_num_sub_vectors": 48,
                                             "index.vector_index_type": "IVF_PQ"})  # fmt: skip
    name, settings = indexes.vector_index_spec(params, 100_000)
    assert name == "vector_ivf_pq_p25_s48_n100000"
    assert settings == {"num_partitions": 25, "num_sub_vectors": 48}
    assert indexes._built_for(name, params) == 100_000
    assert indexes._built_for("vector_idx", params) is None  # LanceDB's default name: size unknown
    other = apply_overrides(params, {"index.vector_rows_per_partition": 2000})
    assert indexes._built_for(name, other) is None  # another partition size: not the index params ask for
    hnsw = apply_overrides(params, {"index.vector_index_type": "IVF_HNSW_SQ"})
    assert indexes.vector_index_spec(hnsw, 1_000)[0] == "vector_ivf_hnsw_sq_p1_n1000"
    assert indexes._built_for("vector_ivf_hnsw_sq_p1_n1000", hnsw) == 1_000


def test_ann_settings_probe_a_share_of_the_partitions() -> None:
    params = apply_overrides(load_params(), {"index.vector_probe_fraction": 0.48, "index.vector_refine_factor": 0})
    assert ann_settings(params, 50) == {"nprobes": 24}  # the tuned point at 100k rows
    assert ann_settings(params, 100) == {"nprobes": 48}  # after a rebuild at 2x: the same share of the data
    assert ann_settings(params, 1) == {"nprobes": 1}
    assert ann_settings(params, None) == {}  # no index (exact search), or one whose name records nothing
    refined = apply_overrides(params, {"index.vector_refine_factor": 3})
    assert ann_settings(refined, 25) == {"nprobes": 12, "refine_factor": 3}
    assert indexes.partitions_in_name("vector_ivf_pq_p50_s48_n100000") == 50
    assert indexes.partitions_in_name("vector_idx") is None


def _base(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        vector = rng.normal(size=8)
        body = f"To sync a notebook, open Settings and select Sync. Admins can decide who may pin a tag {i}."
        rows.append({"chunk_id": f"doc-{i}:0", "doc_id": f"doc-{i}", "ordinal": 0, "title": f"Pin a note {i}",
                     "body": body, "text": f"Pin a note {i}\n\n{body}", "url": f"u{i}", "source": "s",
                     "doc_updated_at": "t", "metadata": "{}", "content_hash": "h", "row_hash": "r",
                     "vector": (vector / np.linalg.norm(vector)).tolist()})  # fmt: skip
    return rows


def test_derived_rows_are_seeded_unit_vectors_with_new_ids_and_text() -> None:
    base = _base(5)
    first = kb_query_scale.derived_rows(base, 0, 20)
    assert first == kb_query_scale.derived_rows(base, 0, 20)  # a pure function of the numbers
    assert kb_query_scale.derived_rows(base, 10, 5) == first[10:15]
    assert len({row["chunk_id"] for row in first}) == 20
    assert all(row["text"] == f"{row['title']}\n\n{row['body']}" for row in first)
    assert len({row["text"] for row in first}) > 15  # not duplicates of the 5 base texts
    for row in first:
        vector = np.asarray(row["vector"])
        source = np.asarray(base[int(row["doc_id"].split("-")[1])]["vector"])
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
        assert 0.5 < float(vector @ source) < 0.9999  # near its source chunk, never a copy

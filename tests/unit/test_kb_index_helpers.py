"""Helpers of the chunk index, the search path and publishing, on fakes (no LanceDB, no model)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from evertune.config import apply_overrides, load_params
from evertune.errors import ConfigError, NothingToDo, TransientError
from evertune.kb import embedding, indexes, publish
from evertune.kb.chunk_diff import diff_chunks


def test_diff_chunks_sorts_rows_into_inserts_updates_stale_and_unchanged() -> None:
    new = {"c": {"chunk_id": "c", "row_hash": "3"}, "a": {"chunk_id": "a", "row_hash": "1"},
           "b": {"chunk_id": "b", "row_hash": "2-new"}}  # fmt: skip
    stored = {"a": {"row_hash": "1"}, "b": {"row_hash": "2"}, "z": {"row_hash": "9"}, "y": {"row_hash": "8"}}
    diff = diff_chunks(new, stored)
    assert [row["chunk_id"] for row in diff.inserts] == ["c"]
    assert [row["chunk_id"] for row in diff.updates] == ["b"]
    assert diff.stale == ["y", "z"] and diff.unchanged == 1 and diff.changed
    assert not diff_chunks({"a": new["a"]}, {"a": {"row_hash": "1"}}).changed


@dataclass
class FakeIndex:
    name: str
    index_type: str
    columns: list[str]


@dataclass
class FakeStats:
    num_indexed_rows: int
    num_unindexed_rows: int


@dataclass
class FakeTable:
    """The index calls of a LanceDB table; ``rows`` rows, of which the FTS index covers ``covered``."""

    rows: int
    covered: int | None = None  # None: no FTS index
    index_name: str = indexes.FTS_INDEX_NAME
    lose_rows: int = 0  # rows a concurrent writer adds during a rebuild
    name: str = "chunks"
    version: int = 1
    builds: list[dict[str, Any]] = field(default_factory=list)

    def list_indices(self) -> list[FakeIndex]:
        return [] if self.covered is None else [FakeIndex(self.index_name, "FTS", [indexes.FTS_COLUMN])]

    def index_stats(self, name: str) -> FakeStats:
        assert name == self.index_name
        return FakeStats(self.covered, self.rows - self.covered)

    def create_index(self, column: str, *, config: Any, name: str, replace: bool) -> None:
        self.builds.append({"column": column, "name": name, "replace": replace})
        self.index_name, self.covered, self.version = name, self.rows, self.version + 1
        self.rows += self.lose_rows


def test_ensure_fts_index_never_indexes_an_empty_table() -> None:
    table = FakeTable(rows=0)
    assert not indexes.ensure_fts_index(table, 0)
    assert table.builds == [] and indexes.fts_unindexed_rows(table) is None


def test_ensure_fts_index_builds_after_the_first_load_and_rebuilds_only_when_rows_are_unindexed() -> None:
    table = FakeTable(rows=10)
    assert indexes.ensure_fts_index(table, 10)
    assert table.builds == [{"column": "text", "name": indexes.FTS_INDEX_NAME, "replace": True}]
    assert not indexes.ensure_fts_index(table, 10)  # complete: no new version
    assert len(table.builds) == 1 and table.version == 2
    legacy = FakeTable(rows=12, covered=0, index_name="text_idx")  # built on the empty table by older code
    assert indexes.fts_unindexed_rows(legacy) == 12
    assert indexes.ensure_fts_index(legacy, 12)
    assert legacy.builds[0]["name"] == "text_idx" and indexes.fts_unindexed_rows(legacy) == 0


def test_ensure_fts_index_refuses_an_index_left_short_of_rows() -> None:
    with pytest.raises(TransientError, match="still misses 3 rows"):
        indexes.ensure_fts_index(FakeTable(rows=10, covered=5, lose_rows=3), 10)


def test_optimize_is_due_every_n_writes() -> None:
    params = apply_overrides(load_params(), {"index.optimize_every_n_writes": 3})
    assert [indexes.optimize_due(n, params) for n in range(1, 7)] == [False, False, True, False, False, True]


class FakeModel:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def encode(self, texts: list[str], **_: Any) -> list[Any]:
        import numpy as np
        import torch

        self.threads.append(torch.get_num_threads())
        return [np.zeros(3, dtype="float32") for _ in texts]


def test_queries_embed_with_one_thread_and_the_process_setting_is_restored(monkeypatch) -> None:
    import torch

    params = load_params()
    model = FakeModel()
    monkeypatch.setattr(embedding, "load_query_embedder", lambda params: model)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert embedding.embed_queries(["a question"], params) == [[0.0, 0.0, 0.0]]
        embedding.embed_texts(model, ["a chunk"], params)  # a sync's batch embedding: the process setting
        assert model.threads == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_query_block_in_another_thread_leaves_this_threads_setting_alone() -> None:
    import torch

    from evertune.models.embedder import intra_op_threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    inside, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def other_query() -> None:
        with intra_op_threads(1):
            seen.append(torch.get_num_threads())
            inside.set()
            release.wait(5)

    try:
        worker = threading.Thread(target=other_query)
        worker.start()
        assert inside.wait(5)
        assert seen == [1] and torch.get_num_threads() == 2  # the other query's block is still open
        with intra_op_threads(1):
            assert torch.get_num_threads() == 1
        release.set()
        worker.join(5)
        assert torch.get_num_threads() == 2
    finally:
        release.set()
        torch.set_num_threads(before)


def test_publish_refuses_another_candidate_and_a_superseded_one() -> None:
    evaluation = {"table": "t", "candidate": {"version": 4}}
    publish._check_evaluation_of(evaluation, "t", 4)
    with pytest.raises(ConfigError, match="not t@v5"):
        publish._check_evaluation_of(evaluation, "t", 5)
    publish._refuse_superseded(FakeTable(rows=1, version=4), 4, "production", 3)
    with pytest.raises(NothingToDo, match="superseded by v5"):
        publish._refuse_superseded(FakeTable(rows=1, version=5), 4, "production", 3)


def test_a_retried_rejection_is_logged_once(monkeypatch) -> None:
    logged: list[dict[str, Any]] = []
    monkeypatch.setattr(publish, "_append_log", lambda db, name, event: logged.append(event))
    rejection = {"action": "rejected", "version": 4}
    publish._log_rejection(None, "t", [{"action": "publish", "version": 3}], rejection)
    publish._log_rejection(None, "t", [{"action": "rejected", "version": 4}], rejection)
    publish._log_rejection(None, "t", [], {"action": "rejected", "version": 5})
    assert [event["version"] for event in logged] == [4, 5]

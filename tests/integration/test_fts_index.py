"""The full-text index covers every row of each candidate, and search() caches per published version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import validated_drops
from evertune.config import apply_overrides, load_params
from evertune.kb import indexes, retrieval
from evertune.kb.index import connect, published_version, sync_interval
from evertune.kb.publish import publish
from evertune.kb.retrieval import evaluate_retrieval, search
from evertune.settings import get_settings
from validated_drops import document, tombstone

ARTICLES = {
    "billing-plans": ("Plans and pricing", "The Plus plan costs five dollars a month and adds offline notebooks."),
    "sync-conflicts": ("Fixing sync problems", "If notes do not sync, check that you are signed in and online."),
    "two-factor": ("Two-factor authentication", "Turn on two-factor authentication with an authenticator app."),
    "export-notes": ("Exporting notes", "Export a notebook as Markdown, PDF or HTML from the notebook menu."),
}
GOLDEN = [
    {"query_id": "q1", "query": "how much does the plus plan cost", "relevant_doc_ids": ["billing-plans"]},
    {"query_id": "q2", "query": "my notes stopped syncing", "relevant_doc_ids": ["sync-conflicts"]},
]


def doc(doc_id: str, day: int, text: str | None = None) -> dict[str, Any]:
    title, body = ARTICLES[doc_id]
    return document(doc_id, title, text or body, f"2026-11-{day:02d}T08:00:00+00:00")


def write_drop(folder: Path, docs: list[dict], tombs: list[dict] = ()) -> Path:
    return validated_drops.write_drop(folder, docs, tombs, GOLDEN)


@pytest.fixture(scope="module")
def params():
    return apply_overrides(
        load_params(),
        {"chunk.chunk_tokens": 32, "chunk.chunk_overlap": 8, "retrieval.k": 2,
         "retrieval.min_recall_at_k": 0.5, "retrieval.min_mrr": 0.3},
    )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def embedder(params):
    from evertune.models.embedder import load_embedder

    return load_embedder(params.embed)


@pytest.fixture(autouse=True)
def fresh_search_cache():
    retrieval.clear_table_cache()
    yield
    retrieval.clear_table_cache()


def coverage(settings, result) -> tuple[int, int]:
    """(indexed, unindexed) rows of the full-text index at the candidate version."""
    table = connect(settings).open_table(result.table_name)
    assert table.version == result.version, "the candidate must be the latest version"
    name = indexes.fts_index_name(table)
    assert name == indexes.FTS_INDEX_NAME
    stats = table.index_stats(name)
    return stats.num_indexed_rows, stats.num_unindexed_rows


def fts_hits(settings, result, word: str) -> set[str]:
    """Documents whose indexed rows match ``word`` (``fast_search`` skips rows the index does not cover)."""
    table = connect(settings).open_table(result.table_name)
    table.checkout(result.version)
    rows = table.search(word, query_type="fts", fts_columns="text").fast_search().limit(20).to_list()
    return {row["doc_id"] for row in rows}


def test_every_write_leaves_no_unindexed_rows(tmp_path, evertune_home, params) -> None:
    settings = get_settings()
    first = sync_interval(write_drop(tmp_path / "d1", [doc(d, 1) for d in ARTICLES]), "2026-11-01", params, settings)
    assert first.wrote and first.fts_rebuilt
    assert coverage(settings, first) == (first.rows_total, 0)
    assert fts_hits(settings, first, "authenticator") == {"two-factor"}

    # Edits and inserts: the new words are found through the index alone.
    edited = doc("billing-plans", 2, text="The Plus plan costs six dollars a month, billed by zebrapay.")
    second = sync_interval(write_drop(tmp_path / "d2", [edited]), "2026-11-02", params, settings)
    assert second.chunks_inserted + second.chunks_updated > 0 and second.fts_rebuilt
    assert coverage(settings, second) == (second.rows_total, 0)
    assert fts_hits(settings, second, "zebrapay") == {"billing-plans"}

    # Deletes.
    tomb = tombstone("two-factor", "2026-11-03T08:00:00+00:00")
    third = sync_interval(write_drop(tmp_path / "d3", [], [tomb]), "2026-11-03", params, settings)
    assert third.chunks_deleted > 0
    assert coverage(settings, third)[1] == 0
    assert fts_hits(settings, third, "authenticator") == set()

    # An empty diff writes no version: the index already covers every row.
    again = sync_interval(tmp_path / "d3", "2026-11-03", params, settings)
    assert not again.wrote and not again.fts_rebuilt and again.version == third.version


def test_no_index_on_an_empty_table_then_built_on_the_first_load(tmp_path, evertune_home, params) -> None:
    settings = get_settings()
    tomb = tombstone("web-clipper", "2026-11-01T08:00:00+00:00")
    empty = sync_interval(write_drop(tmp_path / "d1", [], [tomb]), "2026-11-01", params, settings)
    table = connect(settings).open_table(empty.table_name)
    assert table.count_rows() == 0 and indexes.fts_index_name(table) is None
    loaded = sync_interval(write_drop(tmp_path / "d2", [doc("export-notes", 2)]), "2026-11-02", params, settings)
    assert coverage(settings, loaded) == (loaded.rows_total, 0) and loaded.rows_total > 0


def test_optimize_runs_on_schedule_and_the_index_stays_complete(tmp_path, evertune_home, params) -> None:
    settings = get_settings()
    every_2 = apply_overrides(params, {"index.optimize_every_n_writes": 2})
    first = sync_interval(write_drop(tmp_path / "d1", [doc("export-notes", 1)]), "2026-11-01", every_2, settings)
    second = sync_interval(write_drop(tmp_path / "d2", [doc("two-factor", 2)]), "2026-11-02", every_2, settings)
    assert (first.optimized, second.optimized) == (False, True)
    assert coverage(settings, second) == (second.rows_total, 0)


def test_a_crash_before_the_index_step_is_repaired_by_the_rerun(tmp_path, evertune_home, params, monkeypatch) -> None:
    settings = get_settings()
    first = sync_interval(write_drop(tmp_path / "d1", [doc("export-notes", 1)]), "2026-11-01", params, settings)
    with monkeypatch.context() as patch:
        patch.setattr(indexes, "ensure_fts_index", lambda table, rows: False)  # the process died before it
        crashed = sync_interval(write_drop(tmp_path / "d2", [doc("two-factor", 2)]), "2026-11-02", params, settings)
    assert coverage(settings, crashed)[1] > 0
    rerun = sync_interval(tmp_path / "d2", "2026-11-02", params, settings)
    assert not rerun.wrote and rerun.fts_rebuilt and rerun.version > crashed.version > first.version
    assert coverage(settings, rerun) == (rerun.rows_total, 0)


def test_the_candidate_with_the_complete_index_is_evaluated_and_published(tmp_path, evertune_home, params) -> None:
    settings = get_settings()
    folder = write_drop(tmp_path / "d1", [doc(d, 1) for d in ARTICLES])
    result = sync_interval(folder, "2026-11-01", params, settings)
    evaluation = evaluate_retrieval(
        result.table_name, result.version, folder / "golden_retrieval.jsonl", params, settings
    )
    outcome = publish(result.table_name, result.version, evaluation, params, settings)  # not "superseded"
    assert outcome["changed"] and outcome["version"] == result.version
    assert published_version(connect(settings).open_table(result.table_name), "production") == result.version
    assert search("zebrapay", params, settings, mode="fts") == []


def test_search_opens_and_checks_a_published_version_once(tmp_path, evertune_home, params, monkeypatch) -> None:
    settings = get_settings()
    opened: list[Any] = []
    real_open = retrieval._open_version

    def counting_open(*args, **kwargs):
        table = real_open(*args, **kwargs)
        opened.append(table.version)
        return table

    monkeypatch.setattr(retrieval, "_open_version", counting_open)
    folder = write_drop(tmp_path / "d1", [doc(d, 1) for d in ARTICLES])
    first = sync_interval(folder, "2026-11-01", params, settings)
    table = connect(settings).open_table(first.table_name)
    table.tags.create("production", first.version)
    for _ in range(3):
        assert search("plus plan price", params, settings, k=1)[0]["doc_id"] == "billing-plans"
    assert opened == [first.version]

    # The tag moves: the next query opens the new version once, and sees its rows.
    edited = doc("export-notes", 2, text="Export a notebook to zebrapay archives from the notebook menu.")
    second = sync_interval(write_drop(tmp_path / "d2", [edited]), "2026-11-02", params, settings)
    table.tags.update("production", second.version)
    for _ in range(2):
        assert search("zebrapay", params, settings, k=1, mode="fts")[0]["doc_id"] == "export-notes"
    assert opened == [first.version, second.version]

    # A version number shares the cache (first.version is still there); the unpublished head is never cached.
    assert search("zebrapay", params, settings, k=1, mode="fts", version_or_tag=first.version) == []
    for _ in range(2):
        search("zebrapay", params, settings, k=1, mode="fts", version_or_tag="latest")
    assert opened == [first.version, second.version, second.version, second.version]

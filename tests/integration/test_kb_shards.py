"""The sharded refresh against the unsharded sync (real LanceDB, real MiniLM, real files in the staging area).

1 shard must give exactly today's table (ids, hashes, vectors bit for bit); 2 shards the same ids and hashes and
the same vectors up to float rounding (other batches); the data lands in one commit; a merge that dies midway
(an exception, or the process killed) leaves ``production`` where it was, and its re-run completes the sync.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evertune.config import apply_overrides, load_params
from evertune.data.versioning import validated_folder
from evertune.kb import index as kb_index
from evertune.kb import refresh
from evertune.kb.index import connect, read_table_rows, sync_interval, table_name_for
from evertune.kb.retrieval import clear_table_cache, search
from evertune.settings import LOCATION_ENV_VARS, get_settings
from validated_drops import document, tombstone, write_drop

REPO = Path(__file__).resolve().parents[2]
DAY1, DAY2 = "2026-11-01", "2026-11-02"
SMALL_CHUNKS = {"chunk.chunk_tokens": 32, "chunk.chunk_overlap": 8}
TOPICS = ("billing", "sync", "export", "sharing", "security", "offline", "search", "tags")


def _article(n: int, day: int, edit: str = "") -> dict[str, Any]:
    topic = TOPICS[n % len(TOPICS)]
    text = (f"Article {n} explains {topic} in Nimbus Notes. Open the {topic} page from settings and follow the "
            f"steps shown there; step {n} applies to every plan.{edit}\n\nIf {topic} still fails, restart the app, "
            f"sign in again and contact support with the code {n * 7919}.")
    return document(f"doc-{n:02d}", f"{topic.title()} guide {n}", text, f"2026-11-{day:02d}T08:00:00+00:00")


def _drops() -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Day 1: 12 articles. Day 2: 3 edited, 2 new, 2 tombstoned, the rest re-delivered unchanged."""
    day1 = [_article(n, 1) for n in range(12)]
    day2 = [_article(n, 2, " Updated for the new release.") for n in (0, 1, 2)] + [_article(n, 2) for n in (12, 13)]
    day2 += [_article(n, 1) for n in range(5, 12)]
    return {DAY1: (day1, []), DAY2: (day2, [tombstone("doc-03", "2026-11-02T09:00:00+00:00"),
                                            tombstone("doc-04", "2026-11-02T09:00:00+00:00")])}


def _home(root: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    home = root / name
    home.mkdir()
    monkeypatch.setenv("EVERTUNE_HOME", str(home))
    for var in LOCATION_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    settings = get_settings()
    for day, (docs, tombs) in _drops().items():
        write_drop(settings.data_repo / validated_folder(day), docs, tombs)
    return settings


def _rows(settings: Any, params: Any, version: int | None = None) -> dict[str, tuple]:
    table = connect(settings).open_table(table_name_for(params))
    if version is not None:
        table.checkout(version)
    rows = read_table_rows(table, ["chunk_id", "doc_id", "content_hash", "row_hash", "vector"])
    return {row["chunk_id"]: (row["content_hash"], row["row_hash"], np.asarray(row["vector"])) for row in rows}


def _same_rows(left: dict[str, tuple], right: dict[str, tuple], *, exact: bool) -> None:
    assert sorted(left) == sorted(right)
    for chunk_id, (content_hash, row_hash, vector) in left.items():
        assert (content_hash, row_hash) == right[chunk_id][:2], chunk_id
        if exact:
            assert np.array_equal(vector, right[chunk_id][2]), chunk_id
        else:
            np.testing.assert_allclose(vector, right[chunk_id][2], atol=2e-6, err_msg=chunk_id)


def _counts(result: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key.startswith(("docs_", "chunks_", "rows_"))}


def _sharded_day(day: str, overrides: dict[str, Any]) -> tuple[list[dict], list[dict], dict[str, Any]]:
    plan = refresh.plan_shards(day, overrides)
    embedded = refresh.embed_shards(day, plan, overrides)
    return plan, embedded, refresh.sync_index(day, overrides, embedded)


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Today's sync of both days: the reference table and its results."""
    monkeypatch = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("unsharded")
    try:
        settings = _home(root, "home", monkeypatch)
        params = apply_overrides(load_params(), SMALL_CHUNKS)
        results = [sync_interval(settings.data_repo / validated_folder(day), day, params, settings).to_dict()
                   for day in (DAY1, DAY2)]
        yield {"rows": _rows(settings, params), "results": results, "params": params}
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("shards", [1, 2])
def test_sharded_sync_equals_the_unsharded_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               unsharded: dict, shards: int) -> None:
    settings = _home(tmp_path, "home", monkeypatch)
    params, overrides = unsharded["params"], {**SMALL_CHUNKS, "index.embed_shards": shards}
    for day, reference in zip((DAY1, DAY2), unsharded["results"], strict=True):
        before = connect(settings).open_table(table_name_for(params)).version if day == DAY2 else None
        plan, embedded, result = _sharded_day(day, overrides)
        assert [shard["index"] for shard in plan] == list(range(shards))
        assert sum(shard["texts"] for shard in plan) == reference["chunks_embedded"] > 0
        if shards == 2:
            assert all(shard["texts"] > 0 for shard in plan), plan  # both workers get work
        assert result["chunks_embedded_in_merge"] == 0
        assert _counts(result) == _counts(reference)
        assert result["version"] == reference["version"]
        if before is not None:
            # Planning and embedding write nothing; the merge's data lands in its first new version, the
            # versions after it only index (full-text, vector, compaction) the same rows.
            assert result["previous_version"] == before
            _same_rows(_rows(settings, params, before + 1), _rows(settings, params), exact=True)
    # 1 shard: the same texts in the same batches as the unsharded sync, so bit for bit today's table.
    _same_rows(_rows(settings, params), unsharded["rows"], exact=shards == 1)


def test_rerunning_a_shard_reuses_its_staged_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     unsharded: dict) -> None:
    _home(tmp_path, "home", monkeypatch)
    overrides = {**SMALL_CHUNKS, "index.embed_shards": 2}
    plan = refresh.plan_shards(DAY1, overrides)
    first = refresh.embed_shards(DAY1, plan[:1], overrides)
    again = refresh.embed_shards(DAY1, refresh.plan_shards(DAY1, overrides), overrides)
    assert [shard["reused"] for shard in again] == [True, False]
    assert first[0]["embedded"] == plan[0]["texts"] and again[0]["embedded"] == 0


def _publish_day1(settings: Any, params: Any, overrides: dict[str, Any]) -> int:
    _sharded_day(DAY1, overrides)
    table = connect(settings).open_table(table_name_for(params))
    table.tags.create(params.index.publish_tag, table.version)
    return table.version


def _production_state(settings: Any, params: Any) -> tuple[int, list[str]]:
    table = connect(settings).open_table(table_name_for(params))
    version = int(table.tags.list()[params.index.publish_tag]["version"])
    clear_table_cache()
    hits = search("restart the app", params, settings, k=20, mode="fts")
    return version, sorted({hit["doc_id"] for hit in hits})


def test_a_merge_failing_midway_leaves_production_where_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               unsharded: dict) -> None:
    settings = _home(tmp_path, "home", monkeypatch)
    params, overrides = unsharded["params"], {**SMALL_CHUNKS, "index.embed_shards": 2}
    published = _publish_day1(settings, params, overrides)
    before = _production_state(settings, params)
    plan = refresh.plan_shards(DAY2, overrides)
    embedded = refresh.embed_shards(DAY2, plan, overrides)

    def fail(*_: Any) -> None:  # after the chunks' merge commit, before the document state
        raise RuntimeError("worker lost in the middle of the merge")

    monkeypatch.setattr(kb_index, "_write_docstate", fail)
    with pytest.raises(RuntimeError, match="worker lost"):
        refresh.sync_index(DAY2, overrides, embedded)
    assert connect(settings).open_table(table_name_for(params)).version > published  # the merge did write
    assert _production_state(settings, params) == before
    monkeypatch.undo()
    monkeypatch.setenv("EVERTUNE_HOME", str(tmp_path / "home"))
    result = refresh.sync_index(DAY2, overrides, embedded)  # the retry recomputes the diff and completes
    assert result["chunks_inserted"] + result["chunks_updated"] + result["chunks_deleted"] == 0
    _same_rows(_rows(settings, params), unsharded["rows"], exact=False)


KILLED_MERGE = textwrap.dedent("""
    import os, sys
    from evertune.kb import index, refresh
    real = index.merge_chunks
    def merge_then_die(*args):
        real(*args)
        os._exit(137)  # killed right after the chunks' commit: no cleanup, no finally
    index.merge_chunks = merge_then_die
    import json
    refresh.sync_index(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]))
""")


def test_a_merge_killed_midway_leaves_production_where_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              unsharded: dict) -> None:
    import json

    settings = _home(tmp_path, "home", monkeypatch)
    params, overrides = unsharded["params"], {**SMALL_CHUNKS, "index.embed_shards": 2}
    _publish_day1(settings, params, overrides)
    before = _production_state(settings, params)
    embedded = refresh.embed_shards(DAY2, refresh.plan_shards(DAY2, overrides), overrides)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "include"), str(REPO / "plugins")])}
    proc = subprocess.run([sys.executable, "-c", KILLED_MERGE, DAY2, json.dumps(overrides), json.dumps(embedded)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert _production_state(settings, params) == before
    refresh.sync_index(DAY2, overrides, embedded)
    _same_rows(_rows(settings, params), unsharded["rows"], exact=False)

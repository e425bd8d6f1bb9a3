"""Incremental, order-independent sync of validated drops into LanceDB (real LanceDB, real MiniLM)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from evertune.config import apply_overrides, load_params
from evertune.errors import ConfigError
from evertune.kb import index as kb_index
from evertune.kb.chunking import chunk_document
from evertune.kb.index import (
    DOCSTATE_SUFFIX,
    connect,
    normalize_timestamp,
    plan_documents,
    read_table_rows,
    sync_interval,
    table_name_for,
)
from evertune.models.embedder import embedder_id
from evertune.settings import get_settings
from validated_drops import document, tombstone, write_drop

ARTICLES = {
    "billing-plans": (
        "Plans and pricing",
        (
            "Nimbus Notes has three plans: Free, Plus and Team. Plus costs five dollars a month and adds offline "
            "notebooks and larger attachments. Team adds shared workspaces, admin controls and single sign-on.\n\n"
            "Switch plans from the billing page at any time. A downgrade takes effect at the end of the period."
        ),
    ),
    "sync-conflicts": (
        "Fixing sync problems",
        (
            "If notes do not sync, check that you are signed in on every device and online. Sync pauses while "
            "battery saver is on.\n\nA note edited on two devices at once becomes a conflict copy with an orange "
            "marker; merge the text you want and delete the copy."
        ),
    ),
    "two-factor": (
        "Two-factor authentication",
        (
            "Turn on two-factor authentication in security settings, pick an authenticator app and scan the QR "
            "code. Keep the recovery codes somewhere safe.\n\nLost your phone? Sign in with a recovery code and "
            "remove the old authenticator."
        ),
    ),
    "export-notes": (
        "Exporting notes",
        (
            "Export a notebook as Markdown, PDF or HTML from the notebook menu. Attachments come in a zip "
            "archive.\n\nLarge exports are prepared in the background; an email with a download link follows."
        ),
    ),
    "web-clipper": (
        "Web clipper",
        (
            "The web clipper saves articles, bookmarks and screenshots from the browser into a notebook of your "
            "choice. Install it from the extensions store and sign in once."
        ),
    ),
}


def stamp(day: int, hour: int = 8) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:00:00+00:00"


def doc(doc_id: str, updated_at: str, *, title: str | None = None, text: str | None = None) -> dict[str, Any]:
    base_title, base_text = ARTICLES[doc_id]
    return document(doc_id, title or base_title, text or base_text, updated_at, metadata={"topic": doc_id.split("-")[0]})


def tomb(doc_id: str, deleted_at: str) -> dict[str, Any]:
    return tombstone(doc_id, deleted_at)


@pytest.fixture(scope="module")
def params():
    # Small chunks so that every article spans several chunks; optimize on every 3rd write.
    return apply_overrides(
        load_params(),
        {"chunk.chunk_tokens": 32, "chunk.chunk_overlap": 8, "index.optimize_every_n_writes": 3},
    )


@pytest.fixture(scope="module")
def embedder(params):
    from evertune.models.embedder import load_embedder

    return load_embedder(params.embed)


@pytest.fixture
def embedded_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Spy on what really reaches the embedder (the real model still runs)."""
    seen: list[str] = []
    real = kb_index.embed_texts

    def spy(model, texts, params):
        seen.extend(texts)
        return real(model, texts, params)

    monkeypatch.setattr(kb_index, "embed_texts", spy)
    return seen


def chunks_of(document: dict[str, Any], params, embedder) -> list:
    return chunk_document(
        document, embedder.tokenizer, params.chunk, embedder_id(params.embed), max_seq_length=embedder.max_seq_length
    )


def snapshot(settings, params) -> dict[str, tuple]:
    db = connect(settings)
    table = db.open_table(table_name_for(params))
    rows = read_table_rows(table, ["chunk_id", "doc_id", "content_hash", "row_hash"])
    ids = [row["chunk_id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicate chunk ids"
    return {row["chunk_id"]: (row["doc_id"], row["content_hash"], row["row_hash"]) for row in rows}


def docstate(settings, params) -> dict[str, tuple]:
    db = connect(settings)
    rows = read_table_rows(
        db.open_table(table_name_for(params) + DOCSTATE_SUFFIX), ["doc_id", "updated_at", "deleted", "interval"]
    )
    return {row["doc_id"]: (row["updated_at"], row["deleted"], row["interval"]) for row in rows}


def test_incremental_sync_embeds_only_changed_chunks(tmp_path, evertune_home, params, embedder, embedded_texts) -> None:
    settings = get_settings()
    day1 = [doc(doc_id, stamp(1)) for doc_id in ("billing-plans", "sync-conflicts", "two-factor")]
    first = sync_interval(write_drop(tmp_path / "d1", day1), "2026-11-01", params, settings)
    expected_day1 = {c.chunk_id: c.content_hash for d in day1 for c in chunks_of(d, params, embedder)}
    assert first.wrote and first.docs_upserted == 3
    assert first.chunks_inserted == first.chunks_embedded == len(expected_day1) == len(embedded_texts)
    assert {cid: v[1] for cid, v in snapshot(settings, params).items()} == expected_day1

    # Day 2: edit the tail of one article, add a new one, repeat an unchanged one.
    _, billing_text = ARTICLES["billing-plans"]
    edited = doc("billing-plans", stamp(2), text=billing_text.replace("end of the period", "end of the month"))
    day2 = [edited, doc("export-notes", stamp(2)), doc("two-factor", stamp(1))]
    embedded_texts.clear()
    second = sync_interval(write_drop(tmp_path / "d2", day2), "2026-11-02", params, settings)
    new_hashes = {c.content_hash for d in (edited, day2[1]) for c in chunks_of(d, params, embedder)}
    expected_embedded = new_hashes - set(expected_day1.values())
    assert 0 < second.chunks_embedded == len(expected_embedded) == len(embedded_texts)
    assert {hashlib.sha256(t.encode()).hexdigest() for t in embedded_texts} == expected_embedded
    # Rows of the edited article whose text did not change are rewritten (new updated_at) with their stored vector.
    assert second.chunks_inserted + second.chunks_updated > second.chunks_embedded
    # A re-delivered, identical article wins the updated_at tie by its later interval but changes no chunk.
    assert second.docs_upserted == 3
    two_factor = {c.chunk_id for c in chunks_of(day2[2], params, embedder)}
    assert second.chunks_unchanged >= len(two_factor)
    assert second.version > first.version
    assert set(second.timings) >= {"read", "chunk", "embed", "write", "total"}


def test_edits_and_tombstones_remove_stale_chunks(tmp_path, evertune_home, params, embedder) -> None:
    settings = get_settings()
    day1 = [doc(doc_id, stamp(1)) for doc_id in ("billing-plans", "sync-conflicts", "two-factor")]
    sync_interval(write_drop(tmp_path / "d1", day1), "2026-11-01", params, settings)
    before = snapshot(settings, params)

    short = doc("billing-plans", stamp(2), text="Nimbus Notes has three plans: Free, Plus and Team.")
    result = sync_interval(
        write_drop(tmp_path / "d2", [short], [tomb("two-factor", stamp(2))]), "2026-11-02", params, settings
    )
    after = snapshot(settings, params)
    old_billing = {cid for cid, v in before.items() if v[0] == "billing-plans"}
    new_billing = {c.chunk_id for c in chunks_of(short, params, embedder)}
    assert len(new_billing) == 1 < len(old_billing)
    assert {cid for cid, v in after.items() if v[0] == "billing-plans"} == new_billing
    assert not any(v[0] == "two-factor" for v in after.values())
    # Deletes are scoped to this drop's documents: the untouched article is byte-for-byte the same.
    assert {k: v for k, v in after.items() if v[0] == "sync-conflicts"} == {
        k: v for k, v in before.items() if v[0] == "sync-conflicts"
    }
    n_two_factor = sum(1 for v in before.values() if v[0] == "two-factor")
    assert result.chunks_deleted == len(old_billing - new_billing) + n_two_factor
    assert result.docs_deleted == 1 and result.docs_upserted == 1


def test_rerunning_the_same_interval_changes_nothing(tmp_path, evertune_home, params, embedded_texts) -> None:
    settings = get_settings()
    drop = write_drop(
        tmp_path / "d1", [doc(d, stamp(1)) for d in ("billing-plans", "web-clipper")], [tomb("x-gone", stamp(1))]
    )
    first = sync_interval(drop, "2026-11-01", params, settings)
    content = snapshot(settings, params)
    embedded_texts.clear()
    again = sync_interval(drop, "2026-11-01", params, settings)
    assert again.version == first.version  # no new table version for an empty diff
    assert not again.wrote
    assert again.chunks_embedded == again.chunks_inserted == again.chunks_updated == again.chunks_deleted == 0
    assert again.chunks_unchanged == first.chunks_inserted
    assert again.docs_unchanged == 3 and again.docs_upserted == 0
    assert embedded_texts == []
    assert snapshot(settings, params) == content


def five_days() -> list[tuple[str, list[dict], list[dict]]]:
    """Edits, tombstones, a stale tombstone, a re-creation after deletion and an updated_at tie."""
    _, billing = ARTICLES["billing-plans"]
    return [
        ("2026-11-01", [doc(d, stamp(1)) for d in ("billing-plans", "sync-conflicts", "two-factor", "web-clipper")], []),
        ("2026-11-02", [doc("billing-plans", stamp(2), text=billing.replace("five", "six")), doc("export-notes", stamp(2))],
         [tomb("web-clipper", stamp(2))]),
        ("2026-11-03", [doc("web-clipper", stamp(1, 6))],  # older than its tombstone: must not resurrect
         [tomb("two-factor", stamp(3)), tomb("export-notes", stamp(1))]),  # the latter is stale
        ("2026-11-04", [doc("billing-plans", stamp(4), text=billing.replace("five", "seven")),
                        doc("sync-conflicts", stamp(4), title="Sync problems")], []),
        ("2026-11-05", [doc("two-factor", stamp(5), title="2FA"),  # re-created after its tombstone
                        doc("sync-conflicts", stamp(4), title="Sync troubleshooting")], []),  # tie: later interval wins
    ]  # fmt: skip


def apply_days(base: Path, order: list[int], params, settings) -> list:
    days = five_days()
    return [
        sync_interval(write_drop(base / f"{days[i][0]}-{n}", days[i][1], days[i][2]), days[i][0], params, settings)
        for n, i in enumerate(order)
    ]


def test_days_in_any_order_converge_to_the_same_table(tmp_path, evertune_home, params, embedder) -> None:
    settings = get_settings()
    in_order = dataclasses.replace(settings, lancedb_uri=str(tmp_path / "in-order"))
    shuffled = dataclasses.replace(settings, lancedb_uri=str(tmp_path / "shuffled"))
    order = [4, 1, 3, 0, 2]
    assert order != sorted(order)
    results = apply_days(tmp_path / "a", [0, 1, 2, 3, 4], params, in_order)
    apply_days(tmp_path / "b", order, params, shuffled)
    reference = snapshot(in_order, params)

    # Expected survivors, derived from the scenario by hand: two-factor re-created, web-clipper and
    # nothing else deleted, the stale tombstone ignored.
    assert {v[0] for v in reference.values()} == {"billing-plans", "sync-conflicts", "two-factor", "export-notes"}
    days = five_days()
    final_docs = [days[3][1][0], days[4][1][1], days[4][1][0], days[1][1][1]]
    expected = {c.chunk_id: c.content_hash for d in final_docs for c in chunks_of(d, params, embedder)}
    assert {cid: v[1] for cid, v in reference.items()} == expected

    assert snapshot(shuffled, params) == reference
    assert docstate(shuffled, params) == docstate(in_order, params)

    # Re-applying every day again, newest first, changes nothing.
    version = results[-1].version
    rerun = apply_days(tmp_path / "c", [4, 3, 2, 1, 0], params, in_order)
    assert all(not r.wrote and r.chunks_embedded == 0 for r in rerun)
    assert rerun[-1].version == version
    assert snapshot(in_order, params) == reference
    # optimize() ran on the 3rd write only (optimize_every_n_writes=3), never on every write.
    assert [r.optimized for r in results] == [False, False, True, False, False]


def test_older_upsert_never_resurrects_a_newer_tombstone(tmp_path, evertune_home, params) -> None:
    settings = get_settings()
    sync_interval(write_drop(tmp_path / "d3", [], [tomb("web-clipper", stamp(3))]), "2026-11-03", params, settings)
    late = sync_interval(write_drop(tmp_path / "d1", [doc("web-clipper", stamp(1))]), "2026-11-01", params, settings)
    assert late.docs_skipped_older == 1 and late.chunks_inserted == 0 and not late.wrote
    assert snapshot(settings, params) == {}
    newer = sync_interval(write_drop(tmp_path / "d4", [doc("web-clipper", stamp(4))]), "2026-11-04", params, settings)
    assert newer.docs_upserted == 1 and newer.chunks_inserted > 0


def test_plan_is_last_writer_wins_in_every_order() -> None:
    """Pure check of the decision rule over all 120 orders of five drops touching one document."""
    events = [
        ("2026-11-01", [{"doc_id": "a", "updated_at": normalize_timestamp(stamp(1), what="t"), "content_hash": "h1"}], []),
        ("2026-11-02", [], [{"doc_id": "a", "deleted_at": normalize_timestamp(stamp(2), what="t")}]),
        ("2026-11-03", [{"doc_id": "a", "updated_at": normalize_timestamp(stamp(2), what="t"), "content_hash": "h2"}], []),
        ("2026-11-04", [{"doc_id": "a", "updated_at": normalize_timestamp(stamp(3), what="t"), "content_hash": "h3"}], []),
        ("2026-11-05", [{"doc_id": "a", "updated_at": normalize_timestamp(stamp(3), what="t"), "content_hash": "h4"}], []),
    ]  # fmt: skip
    finals = set()
    for order in itertools.permutations(range(5)):
        state: dict[str, dict] = {}
        for i in order:
            interval, docs, tombs = events[i]
            plan = plan_documents(docs, tombs, interval, state)
            for row in plan.state_rows:
                state[row["doc_id"]] = row
        finals.add(tuple(sorted(state["a"].items())))
    assert len(finals) == 1
    final = dict(next(iter(finals)))
    # Same updated_at on 11-04 and 11-05: the later interval wins; the tombstone (tie with h2) lost to nothing newer.
    assert final["content_hash"] == "h4" and not final["deleted"] and final["interval"] == "2026-11-05"
    # A tombstone wins a tie with an upsert of the same timestamp, whatever the intervals.
    state = {}
    for interval, docs, tombs in (events[2], events[1]):
        for row in plan_documents(docs, tombs, interval, state).state_rows:
            state[row["doc_id"]] = row
    assert state["a"]["deleted"]


def test_table_identity_is_checked_and_new_embedder_settings_mean_a_new_table(tmp_path, evertune_home, params) -> None:
    settings = get_settings()
    sync_interval(write_drop(tmp_path / "d1", [doc("web-clipper", stamp(1))]), "2026-11-01", params, settings)
    table = connect(settings).open_table(table_name_for(params))
    meta = kb_index.table_metadata(table)
    assert meta[kb_index.META_EMBEDDER_ID] == embedder_id(params.embed)
    assert meta[kb_index.META_DIM] == "384" and meta[kb_index.META_NORMALIZE] == "true"
    assert any(ix.index_type == "FTS" and ix.columns == ["text"] for ix in table.list_indices())

    other_chunker = apply_overrides(params, {"chunk.chunker_version": "tok-v2"})
    assert table_name_for(other_chunker) != table_name_for(params)
    unnormalized = apply_overrides(params, {"embed.normalize": False})
    with pytest.raises(ConfigError, match="normalize"):
        sync_interval(tmp_path / "d1", "2026-11-01", unnormalized, settings)


def test_random_duplicate_rows_are_deduped_on_the_key(tmp_path, evertune_home, params, embedder) -> None:
    settings = get_settings()
    rows = [doc("export-notes", stamp(1)), doc("export-notes", stamp(2), title="Exporting notes (new)")]
    random.Random(3).shuffle(rows)
    result = sync_interval(write_drop(tmp_path / "d1", rows), "2026-11-02", params, settings)
    expected = {
        c.chunk_id: c.content_hash
        for c in chunks_of(rows[0] if "new" in rows[0]["title"] else rows[1], params, embedder)
    }
    assert {cid: v[1] for cid, v in snapshot(settings, params).items()} == expected
    assert result.chunks_inserted == len(expected)

"""Retrieval evaluation, the publish gate, the production tag, rollback and the kb CLI (real LanceDB + MiniLM)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import validated_drops
from evertune.config import apply_overrides, load_params
from evertune.errors import NothingToDo, QualityGateFailed
from evertune.kb import cli as kb_cli
from evertune.kb.index import connect, published_version, sync_interval
from evertune.kb.publish import publish, publish_history, rollback
from evertune.kb.retrieval import evaluate_retrieval, search
from evertune.settings import get_settings
from validated_drops import document, tombstone

ARTICLES = {
    "billing-plans": (
        "Plans and pricing",
        (
            "The Plus plan costs five dollars a month and adds offline notebooks. "
            "Team adds shared workspaces and admin controls. Switch plans on the billing page."
        ),
    ),
    "sync-conflicts": (
        "Fixing sync problems",
        (
            "If notes do not sync, check that you are signed in and online. "
            "Sync pauses while battery saver is on. Conflict copies get an orange marker."
        ),
    ),
    "two-factor": (
        "Two-factor authentication",
        (
            "Turn on two-factor authentication in security settings with an "
            "authenticator app. Lost your phone? Sign in with a recovery code."
        ),
    ),
    "export-notes": (
        "Exporting notes",
        (
            "Export a notebook as Markdown, PDF or HTML from the notebook menu. "
            "Large exports arrive by email as a download link."
        ),
    ),
    "web-clipper": (
        "Web clipper",
        (
            "The browser web clipper saves articles, bookmarks and screenshots into a "
            "notebook. Install it from the extensions store."
        ),
    ),
}
GOLDEN = [
    {"query_id": "q1", "query": "how much does the plus plan cost per month", "relevant_doc_ids": ["billing-plans"]},
    {"query_id": "q2", "query": "my notes stopped syncing", "relevant_doc_ids": ["sync-conflicts"]},
    {"query_id": "q3", "query": "I lost my phone with the authenticator app", "relevant_doc_ids": ["two-factor"]},
    {"query_id": "q4", "query": "download my notebook as a PDF", "relevant_doc_ids": ["export-notes"]},
    {"query_id": "q5", "query": "save a web page from the browser", "relevant_doc_ids": ["web-clipper"]},
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
        {"chunk.chunk_tokens": 32, "chunk.chunk_overlap": 8, "retrieval.k": 3,
         "retrieval.min_recall_at_k": 0.8, "retrieval.min_mrr": 0.5},
    )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def embedder(params):
    """Load the model once per module, outside the tests' own timings."""
    from evertune.models.embedder import load_embedder

    return load_embedder(params.embed)


def sync_eval_publish(folder: Path, interval: str, params, settings, **kwargs) -> tuple[Any, dict, dict]:
    result = sync_interval(folder, interval, params, settings)
    evaluation = evaluate_retrieval(
        result.table_name, result.version, folder / "golden_retrieval.jsonl", params, settings
    )
    return result, evaluation, publish(result.table_name, result.version, evaluation, params, settings, **kwargs)


def live_version(settings, table_name: str, params) -> int | None:
    return published_version(connect(settings).open_table(table_name), params.index.publish_tag)


def test_publish_moves_the_tag_and_is_idempotent(tmp_path, evertune_home, params) -> None:
    settings = get_settings()
    with pytest.raises(NothingToDo):
        search("plus plan price", params, settings)
    drop = write_drop(tmp_path / "d1", [doc(d, 1) for d in ARTICLES])
    result, evaluation, published = sync_eval_publish(drop, "2026-11-01", params, settings, data_version="rev-1")
    assert evaluation["candidate"]["n_queries"] == 5 and evaluation["published"] is None
    assert evaluation["candidate"]["recall_at_k"] >= 0.8
    assert published["changed"] and published["version"] == result.version
    assert live_version(settings, result.table_name, params) == result.version
    hits = search("how much is the plus plan", params, settings, dedupe_docs=True)
    assert hits[0]["doc_id"] == "billing-plans" and len({h["doc_id"] for h in hits}) == len(hits)
    assert hits[0]["text"] == f"{hits[0]['title']}\n\n{hits[0]['body']}" and hits[0]["url"].endswith("billing-plans")

    # A retry of the whole step: no new version, no new history entry.
    again, evaluation2, published2 = sync_eval_publish(drop, "2026-11-01", params, settings, data_version="rev-1")
    assert again.version == result.version and not published2["changed"]
    history = publish_history(params, settings)
    assert [(e["action"], e["version"], e["data_version"], e["interval"]) for e in history] == [
        ("publish", result.version, "rev-1", "2026-11-01")
    ]
    assert history[0]["live"] and history[0]["metrics"]["recall_at_k"] == evaluation["candidate"]["recall_at_k"]
    assert evaluation2["published"]["version"] == result.version


def test_retrieval_regression_leaves_production_untouched(tmp_path, evertune_home, params) -> None:
    settings = get_settings()
    good, _, _ = sync_eval_publish(
        write_drop(tmp_path / "d1", [doc(d, 1) for d in ARTICLES]), "2026-11-01", params, settings
    )
    # The golden documents of two queries are tombstoned: recall must fall and the gate must hold.
    bad_drop = write_drop(
        tmp_path / "d2",
        [],
        [
            tombstone(d, "2026-11-02T09:00:00+00:00", "x")
            for d in ("two-factor", "web-clipper")
        ],
    )
    bad = sync_interval(bad_drop, "2026-11-02", params, settings)
    evaluation = evaluate_retrieval(bad.table_name, bad.version, bad_drop / "golden_retrieval.jsonl", params, settings)
    assert evaluation["candidate"]["recall_at_k"] < evaluation["published"]["recall_at_k"]
    assert {m["query_id"] for m in evaluation["candidate"]["misses"]} >= {"q3", "q5"}
    with pytest.raises(QualityGateFailed) as failure:
        publish(bad.table_name, bad.version, evaluation, params, settings)
    assert any("recall@3" in reason for reason in failure.value.reasons)
    assert live_version(settings, bad.table_name, params) == good.version
    # The candidate is kept, not restored or deleted, and readers still see the deleted article.
    table = connect(settings).open_table(bad.table_name)
    assert table.version == bad.version
    assert "two-factor" in {h["doc_id"] for h in search("authenticator app recovery code", params, settings)}
    assert "two-factor" not in {
        h["doc_id"] for h in search("authenticator app recovery code", params, settings, version_or_tag="latest")
    }
    assert [e["action"] for e in publish_history(params, settings)] == ["publish", "rejected"]


def test_crash_between_sync_and_publish_then_retry(tmp_path, evertune_home, params) -> None:
    settings = get_settings()
    first, _, _ = sync_eval_publish(
        write_drop(tmp_path / "d1", [doc(d, 1) for d in ARTICLES]), "2026-11-01", params, settings
    )
    price_change = doc("billing-plans", 2, ARTICLES["billing-plans"][1].replace("five dollars", "nine dollars"))
    drop2 = write_drop(tmp_path / "d2", [price_change])
    crashed = sync_interval(drop2, "2026-11-02", params, settings)  # ... and the worker dies before publishing
    assert crashed.version > first.version

    def price_seen() -> str:
        body = search("plus plan price per month", params, settings, k=1)[0]["body"]
        return "nine" if "nine dollars" in body else "five" if "five dollars" in body else body

    assert price_seen() == "five"  # readers stay on the published version
    retry, evaluation, published = sync_eval_publish(drop2, "2026-11-02", params, settings)
    assert retry.version == crashed.version and retry.chunks_embedded == 0
    assert published["changed"] and published["previous_version"] == first.version
    assert price_seen() == "nine"
    assert evaluation["published"]["version"] == first.version


def test_rollback_and_cli(tmp_path, evertune_home, params, capsys, monkeypatch) -> None:
    settings = get_settings()
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.to_dict()))
    monkeypatch.setenv("EVERTUNE_PARAMS", str(params_file))  # the CLI loads params itself
    with pytest.raises(NothingToDo):
        rollback(params, settings)
    v1, _, _ = sync_eval_publish(
        write_drop(tmp_path / "d1", [doc(d, 1) for d in ARTICLES]), "2026-11-01", params, settings
    )
    with pytest.raises(NothingToDo):
        rollback(params, settings)  # nothing earlier to go back to
    edited = doc("export-notes", 2, ARTICLES["export-notes"][1] + " Exports keep your folder structure.")
    v2, _, _ = sync_eval_publish(write_drop(tmp_path / "d2", [edited]), "2026-11-02", params, settings)
    assert v2.version > v1.version

    parser = argparse.ArgumentParser(prog="evertune")
    kb_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["kb", "rollback"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["version"] == v1.version
    assert live_version(settings, v1.table_name, params) == v1.version

    back = rollback(params, settings, to_version=v2.version)
    assert back["changed"] and live_version(settings, v1.table_name, params) == v2.version
    assert not rollback(params, settings, to_version=v2.version)["changed"]

    args = parser.parse_args(["kb", "history"])
    assert args.func(args) == 0
    events = json.loads(capsys.readouterr().out)
    assert [(e["action"], e["version"]) for e in events] == [
        ("publish", v1.version), ("publish", v2.version), ("rollback", v1.version), ("rollback", v2.version)
    ]  # fmt: skip
    assert events[-1]["live"]

    args = parser.parse_args(["kb", "search", "export a notebook as pdf", "-k", "2", "--dedupe-docs"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)[0]["doc_id"] == "export-notes"


def test_absolute_floor_blocks_a_first_publish(tmp_path, evertune_home, params) -> None:
    settings = get_settings()
    drop = write_drop(tmp_path / "d1", [doc("billing-plans", 1), doc("web-clipper", 1)])  # 3 golden docs missing
    result = sync_interval(drop, "2026-11-01", params, settings)
    evaluation = evaluate_retrieval(
        result.table_name, result.version, drop / "golden_retrieval.jsonl", params, settings
    )
    assert evaluation["candidate"]["recall_at_k"] <= 0.4
    with pytest.raises(QualityGateFailed, match="floor"):
        publish(result.table_name, result.version, evaluation, params, settings)
    assert live_version(settings, result.table_name, params) is None


def test_superseded_candidate_is_skipped_and_the_tag_never_moves_back(tmp_path, evertune_home, params) -> None:
    """Concurrent backfill runs: day 2 syncs before day 1, day 1's run publishes the full state first."""
    settings = get_settings()
    day1 = write_drop(tmp_path / "d1", [doc(d, 1) for d in ("billing-plans", "sync-conflicts", "two-factor")])
    day2 = write_drop(tmp_path / "d2", [doc(d, 2) for d in ("export-notes", "web-clipper")])
    early = sync_interval(day2, "2026-11-02", params, settings)  # an intermediate state: 2 of 5 articles
    early_eval = evaluate_retrieval(early.table_name, early.version, day2 / "golden_retrieval.jsonl", params, settings)
    assert early_eval["candidate"]["recall_at_k"] < params.retrieval.min_recall_at_k  # it would fail its gate
    full, _, published = sync_eval_publish(day1, "2026-11-01", params, settings)
    assert full.version > early.version and published["changed"]
    # Day 2's run reaches publish last: its candidate is older than the table's head.
    with pytest.raises(NothingToDo, match="superseded"):
        publish(early.table_name, early.version, early_eval, params, settings)
    assert live_version(settings, full.table_name, params) == full.version
    assert [e["action"] for e in publish_history(params, settings)] == ["publish"]

"""Golden sets: drops fold into a versioned set (add, replace, retire), fitted to the documents, drafted for review."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from evertune.errors import CriticalValidationError
from evertune.kb import golden_drafts as drafts_mod
from evertune.kb.golden import (
    ALL_RELEVANT_DELETED,
    CONFLICTING_GOLDEN_ID,
    QA,
    RETIRED_BY_DROP,
    RETRIEVAL,
    UNKNOWN_DOCUMENT,
    UNKNOWN_GOLDEN_ID,
    NoGoldenSetError,
    apply_doc_state,
    canonical_jsonl,
    fold_golden,
    parse_line,
    qa_line,
    require_golden,
    retrieval_line,
)
from evertune.kb.golden_drafts import draft_golden_queries, heading_question, headings, key_terms
from evertune.kb.records import Reject

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"


def _q(query_id: str, query: str, *docs: str, **extra) -> dict:
    return {"query_id": query_id, "query": query, "relevant_doc_ids": list(docs), **extra}


def _retire(query_id: str, reason: str | None = None) -> dict:
    line = {"query_id": query_id, "retire": True}
    return line | ({"reason": reason} if reason else {})


DAY1 = ("2026-11-01", [_q("g-1", "How do I rotate keys?", "kms"), _q("g-2", "What is WAL?", "wal", "glossary")])
DAY2 = ("2026-11-02", [_q("g-1", "How do I rotate the master key?", "kms"), _q("g-3", "Open a ticket?", "support")])
DAY3 = ("2026-11-03", [_retire("g-2", "WAL page merged"), _q("g-4", "Which ports?", "ports", draft=True)])


# --------------------------------------------------------------------------- drop format
def test_parse_line_keeps_todays_format_and_is_idempotent() -> None:
    raw = {"query_id": "g-1", "query": "  How  do I\r\nrotate? ", "relevant_doc_ids": ["b-doc", "a-doc", "b-doc"]}
    parsed = parse_line(RETRIEVAL, raw)
    assert parsed == {"query_id": "g-1", "query": "How do I\nrotate?", "relevant_doc_ids": ["a-doc", "b-doc"]}
    assert parse_line(RETRIEVAL, parsed) == parsed
    qa = {"qa_id": "q-1", "question": "Price?", "answer": "12 EUR", "doc_id": "billing", "fact_key": "price"}
    assert parse_line(QA, qa) == qa


def test_parse_line_draft_and_retire_lines() -> None:
    assert parse_line(RETRIEVAL, _q("g-1", "Q?", "doc-a", draft=True))["draft"] is True
    assert "draft" not in parse_line(RETRIEVAL, _q("g-1", "Q?", "doc-a", draft=False))
    assert parse_line(RETRIEVAL, _retire("g-1")) == {"query_id": "g-1", "retire": True, "reason": RETIRED_BY_DROP}
    assert parse_line(QA, {"qa_id": "q-9", "retire": True, "reason": " stale "})["reason"] == "stale"
    assert retrieval_line(_retire("g-1"), "golden/retrieval.jsonl:1") == parse_line(RETRIEVAL, _retire("g-1"))
    assert qa_line({"qa_id": "q-9", "retire": True}, "golden/qa.jsonl:1")["retire"] is True


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"query_id": "g-1", "query": "Q?"}, "missing_field"),
        (_q("g-1", "Q?"), "invalid_field"),
        (_q("g 1", "Q?", "doc-a"), "invalid_field"),
        (_q("g-1", "Q?", "Bad_Doc"), "invalid_doc_id"),
        (_q("g-1", "Q?", "doc-a", draft="yes"), "invalid_field"),
        ({"query_id": "g-1", "retire": "true"}, "invalid_field"),
        ({"retire": True}, "missing_field"),
    ],
)
def test_parse_line_rejects_malformed(line: dict, reason: str) -> None:
    with pytest.raises(Reject) as info:
        parse_line(RETRIEVAL, line)
    assert info.value.reason == reason


# --------------------------------------------------------------------------- folding
def test_fold_adds_replaces_and_retires() -> None:
    golden = fold_golden([DAY1, DAY2, DAY3])
    assert [item["query_id"] for item in golden.items] == ["g-1", "g-3", "g-4"]
    assert golden.items[0]["query"] == "How do I rotate the master key?"
    assert [(r.item_id, r.interval, r.reason) for r in golden.retired] == [("g-2", "2026-11-03", "WAL page merged")]
    assert golden.as_of == "2026-11-03" and golden.intervals == ("2026-11-01", "2026-11-02", "2026-11-03")
    assert golden.canonical == canonical_jsonl(golden.items)
    assert golden.canonical.decode().splitlines()[0] == json.dumps(
        golden.items[0], sort_keys=True, separators=(",", ":")
    )
    assert re.fullmatch(r"[0-9a-f]{64}", golden.version) and golden.short_version == golden.version[:12]
    assert golden.summary() | {"version": ""} == {
        "kind": "retrieval", "as_of": "2026-11-03", "version": "", "short_version": golden.short_version,
        "size": 3, "drafts": 1, "retired": 1, "quarantined": 0, "intervals": 3,
    }  # fmt: skip


def test_fold_is_independent_of_drop_order() -> None:
    on_time = [fold_golden([DAY1, DAY2, DAY3], as_of=day) for day in ("2026-11-01", "2026-11-02", "2026-11-03")]
    backfill = {day: fold_golden([DAY3, DAY1, DAY2], as_of=day) for day in ("2026-11-03", "2026-11-01", "2026-11-02")}
    for golden in on_time:
        again = backfill[golden.as_of]
        assert (again.canonical, again.version, again.retired) == (golden.canonical, golden.version, golden.retired)
    assert len({g.version for g in on_time}) == 3
    shuffled = [(day, list(reversed(lines))) for day, lines in (DAY3, DAY2, DAY1)]
    assert fold_golden(shuffled).canonical == on_time[-1].canonical


def test_a_day_without_a_drop_carries_the_set() -> None:
    carried = fold_golden([DAY1, DAY2], as_of="2026-11-05")
    assert carried.version == fold_golden([DAY1, DAY2]).version
    assert fold_golden([DAY1, ("2026-11-02", []), DAY2]).version == carried.version


def test_fold_readds_a_retired_item_and_quarantines_bad_lines() -> None:
    readd = ("2026-11-04", [_q("g-2", "What is the WAL?", "wal")])
    golden = fold_golden([DAY1, DAY3, readd])
    assert "g-2" in {item["query_id"] for item in golden.items} and golden.retired == ()
    bad = ("2026-11-05", [_retire("g-99"), _q("g-5", "A?", "doc-a"), _q("g-5", "B?", "doc-a"), "not an object",
                          {"query_id": "g-6", "query": "Q?"}, _q("g-7", "Same?", "doc-a"), _q("g-7", "Same?", "doc-a")])  # fmt: skip
    folded = fold_golden([DAY1, bad])
    reasons = Counter(issue.reason for issue in folded.quarantined)
    assert reasons == {UNKNOWN_GOLDEN_ID: 1, CONFLICTING_GOLDEN_ID: 1, "malformed_json": 1, "missing_field": 1}
    assert {item["query_id"] for item in folded.items} == {"g-1", "g-2", "g-7"}
    retire_twice = fold_golden([DAY1, DAY3, ("2026-11-04", [_retire("g-2")])])
    assert [i.reason for i in retire_twice.quarantined] == [UNKNOWN_GOLDEN_ID]
    assert "retired on 2026-11-03" in retire_twice.quarantined[0].detail


def test_fold_rejects_bad_intervals_and_folds_qa() -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        fold_golden([("yesterday", [])])
    qa = {"qa_id": "q-1", "question": "Price?", "answer": "12 EUR", "doc_id": "billing", "fact_key": ""}
    golden = fold_golden([("2026-11-01", [qa]), ("2026-11-02", [{"qa_id": "q-1", "retire": True}])], kind=QA)
    assert golden.size == 0 and golden.retired[0].reason == RETIRED_BY_DROP
    assert fold_golden([("2026-11-01", [qa])], kind=QA).items == (qa,)


# --------------------------------------------------------------------------- fitting to the documents
def test_apply_doc_state_retires_prunes_and_quarantines() -> None:
    golden = fold_golden([DAY1, DAY2, ("2026-11-03", [_q("g-2", "What is WAL?", "wal", "glossary")])])
    fitted = apply_doc_state(golden, live_doc_ids={"kms", "glossary"}, deleted_doc_ids={"wal", "support"})
    assert [item["query_id"] for item in fitted.items] == ["g-1", "g-2"]
    assert fitted.items[1]["relevant_doc_ids"] == ["glossary"]
    assert [(p.item_id, p.dropped_doc_ids) for p in fitted.pruned] == [("g-2", ("wal",))]
    assert [(r.item_id, r.reason) for r in fitted.auto_retired] == [("g-3", ALL_RELEVANT_DELETED)]
    assert fitted.golden_version == golden.version and fitted.version != golden.version
    assert golden.items[1]["relevant_doc_ids"] == ["glossary", "wal"]  # the folded set is not modified
    unknown = apply_doc_state(golden, live_doc_ids={"kms", "wal"}, deleted_doc_ids=set())
    assert [(i.item_id, i.reason) for i in unknown.quarantined] == [
        ("g-2", UNKNOWN_DOCUMENT),
        ("g-3", UNKNOWN_DOCUMENT),
    ]
    summary = fitted.summary()
    assert (summary["size"], summary["auto_retired"], summary["pruned"], summary["quarantined"]) == (2, 1, 1, 0)
    assert summary["retired"] == 1 and summary["unreviewed_drafts"] is False


def test_apply_doc_state_counts_add_up_and_deleted_wins() -> None:
    golden = fold_golden([DAY1, DAY2, DAY3])
    fitted = apply_doc_state(golden, live_doc_ids={"kms", "support", "ports"}, deleted_doc_ids={"ports"})
    assert fitted.size + len(fitted.auto_retired) + len(fitted.quarantined) == golden.size
    assert fitted.summary()["retired"] == len(golden.retired) + 1
    edited = apply_doc_state(golden, live_doc_ids={"kms", "support", "ports"}, deleted_doc_ids=())
    assert edited.canonical == golden.canonical and edited.summary()["unreviewed_drafts"] is True


def test_qa_items_retire_with_their_document() -> None:
    qa = [{"qa_id": f"q-{n}", "question": f"Q{n}?", "answer": "A", "doc_id": doc} for n, doc in enumerate("ab")]
    golden = fold_golden([("2026-11-01", [{**r, "doc_id": f"doc-{r['doc_id']}"} for r in qa])], kind=QA)
    fitted = apply_doc_state(golden, live_doc_ids={"doc-a"}, deleted_doc_ids={"doc-b"})
    assert [i["qa_id"] for i in fitted.items] == ["q-0"] and fitted.auto_retired[0].item_id == "q-1"


# --------------------------------------------------------------------------- no golden set
def test_no_golden_set_fails_with_how_to_add_one() -> None:
    empty = apply_doc_state(fold_golden([]), live_doc_ids={"kms"}, deleted_doc_ids=())
    with pytest.raises(NoGoldenSetError) as info:
        require_golden(empty)
    message = str(info.value)
    assert isinstance(info.value, CriticalValidationError)
    assert "no golden retrieval set" in message and "golden/retrieval.jsonl" in message
    assert "evertune kb golden init" in message and "docs/golden-sets.md" in message
    assert info.value.report["size"] == 0
    emptied = apply_doc_state(fold_golden([DAY1]), live_doc_ids=(), deleted_doc_ids={"kms", "wal", "glossary"})
    with pytest.raises(NoGoldenSetError, match="every golden retrieval item is retired or quarantined"):
        require_golden(emptied)
    with pytest.raises(NoGoldenSetError, match="golden/qa.jsonl") as qa_info:
        require_golden(apply_doc_state(fold_golden([], kind=QA), (), ()))
    assert "golden init" not in str(qa_info.value)
    fitted = apply_doc_state(fold_golden([DAY1]), live_doc_ids={"kms", "wal", "glossary"}, deleted_doc_ids=())
    assert require_golden(fitted) is fitted


# --------------------------------------------------------------------------- drafting helpers
def test_headings_and_questions_from_plain_text() -> None:
    text = (
        "Backups\n\nThis page explains how backups work in the product today.\n\n1. Taking a backup\n\n"
        "Run the backup command with the --full flag and wait for it to finish.\n\nConnection strings\n\n"
        "All drivers accept the same URL form and the same options here.\n\nCode\n\nMessage\n\n08006"
    )
    assert headings(text, title="Backups") == ["Taking a backup", "Connection strings"]
    assert heading_question("Taking a backup") == "How do I take a backup?"
    assert heading_question("Create the cluster") == "How do I create the cluster?"
    assert heading_question("When to wake someone up") == "When should I wake someone up?"
    assert heading_question("Which sessions use the CPU?") == "Which sessions use the CPU?"
    assert heading_question("Query it") is None and heading_question("Notes") is None
    assert key_terms("Set audit.enabled, then audit.enabled and --persist; see https://x.example/a.b o.total") == [
        "audit.enabled", "--persist",
    ]  # fmt: skip


def test_draft_rejects_bad_per_doc() -> None:
    with pytest.raises(ValueError, match="per_doc"):
        draft_golden_queries([], per_doc=0)


# --------------------------------------------------------------------------- drafting on the technical corpus
def _corpus_params():
    from evertune.config import apply_overrides, load_params

    return apply_overrides(load_params(), {
        "validate.allowed_sources": ["product-docs", "runbooks", "changelog", "community"],
        "validate.allowed_url_prefixes": ["https://docs.fjordbase.example/"],
    })  # fmt: skip


@pytest.fixture(scope="module")
def corpus_documents(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    from evertune.kb.ingest import ingest_partition

    tmp = tmp_path_factory.mktemp("golden-corpus")
    shutil.copytree(CORPUS, tmp / "ds=2026-12-01")
    result = ingest_partition(str(tmp), "2026-12-01", _corpus_params())
    assert result.quarantine.empty
    return result.documents.to_dict("records")


def _has_heading(document: dict) -> bool:
    path = CORPUS / json.loads(document["metadata"])["file"]
    if path.name == "docs.jsonl":
        return True  # the JSONL pages keep their section titles as short paragraphs
    raw = path.read_text(encoding="utf-8")
    return bool(re.search(r"^#{2,6} \S|<h[2-6][ >]", raw, re.MULTILINE))


def test_drafts_on_the_corpus(corpus_documents: list[dict]) -> None:
    drafts = draft_golden_queries(corpus_documents, per_doc=3, seed=0)
    titles = {d["doc_id"]: d["title"] for d in corpus_documents}
    per_doc = Counter(draft["relevant_doc_ids"][0] for draft in drafts)
    with_heading = [d["doc_id"] for d in corpus_documents if _has_heading(d)]
    assert len(corpus_documents) == 36 and len(with_heading) >= 30
    assert all(per_doc[doc_id] >= 1 for doc_id in with_heading)
    assert max(per_doc.values()) <= 3
    for draft in drafts:
        assert set(draft) == {"query_id", "query", "relevant_doc_ids", "draft"} and draft["draft"] is True
        title = titles[draft["relevant_doc_ids"][0]]
        assert title.casefold() not in draft["query"].casefold(), draft
        assert draft["query"].endswith("?")
        assert parse_line(RETRIEVAL, draft) == draft  # a reviewed drop is valid as it is
    assert len({draft["query_id"] for draft in drafts}) == len(drafts)
    print(f"golden drafts: {len(drafts)} for {len(per_doc)}/{len(corpus_documents)} documents")


def test_drafts_are_deterministic_and_ids_stable(corpus_documents: list[dict]) -> None:
    first = draft_golden_queries(corpus_documents, seed=3)
    assert canonical_jsonl(first) == canonical_jsonl(draft_golden_queries(list(reversed(corpus_documents)), seed=3))
    other_seed = draft_golden_queries(corpus_documents, seed=4)
    assert [d["query_id"] for d in other_seed] == [d["query_id"] for d in first]
    edited = [dict(d, content_hash="0" * 64) if d["doc_id"] == "quickstart" else d for d in corpus_documents]
    changed = {d["query_id"] for d in draft_golden_queries(edited, seed=3)} ^ {d["query_id"] for d in first}
    assert changed and all(
        d["relevant_doc_ids"] == ["quickstart"] for d in first + draft_golden_queries(edited, seed=3)
        if d["query_id"] in changed
    )  # fmt: skip


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9][a-z0-9_.-]*[a-z0-9]|[a-z0-9]", text.lower())


def test_drafts_are_answerable_by_lexical_retrieval(corpus_documents: list[dict]) -> None:
    """A cheap stand-in for the embedder: BM25 over whole documents finds the drafted document in the top 3."""
    docs = {d["doc_id"]: Counter(_tokens(f"{d['title']} {d['text']}")) for d in corpus_documents}
    n, avg = len(docs), sum(sum(c.values()) for c in docs.values()) / len(docs)
    df = Counter(token for counts in docs.values() for token in counts)

    def bm25(query: str, counts: Counter[str]) -> float:
        length = sum(counts.values())
        return sum(
            math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) * counts[t] * 2.2 / (counts[t] + 1.2 * (0.25 + 0.75 * length / avg))
            for t in set(_tokens(query)) if t in counts
        )  # fmt: skip

    drafts = draft_golden_queries(corpus_documents)
    hits = 0
    for draft in drafts:
        ranked = sorted(docs, key=lambda doc_id: -bm25(draft["query"], docs[doc_id]))
        hits += draft["relevant_doc_ids"][0] in ranked[:3]
    print(f"golden drafts lexical recall@3: {hits}/{len(drafts)}")
    assert hits >= 0.6 * len(drafts)


# --------------------------------------------------------------------------- init command
def test_init_command_writes_drafts_into_landing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from evertune.errors import ConfigError, NothingToDo
    from evertune.settings import Settings

    documents = [
        {"doc_id": "guide", "title": "Guide", "text": "Intro text of the guide page.\n\nCreate the cluster\n\n"
         "Run the init command once on a fresh machine and wait for it.", "content_hash": "1" * 64},
        {"doc_id": "empty-page", "title": "Empty", "text": "Nothing here.", "content_hash": "2" * 64},
    ]  # fmt: skip
    monkeypatch.setattr(drafts_mod, "published_documents", lambda root: documents)
    settings = dataclasses.replace(Settings.from_env(), landing_uri=str(tmp_path / "landing"), data_repo=tmp_path)
    result = drafts_mod.init_command(settings, "2026-12-02")
    path = tmp_path / "landing" / "ds=2026-12-02" / "golden" / "retrieval.jsonl"
    assert result == {"path": str(path), "drafts": 1, "documents": 2, "documents_without_drafts": ["empty-page"]}
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["query"] == "How do I create the cluster?" and lines[0]["draft"] is True
    golden = fold_golden([("2026-12-02", lines)])
    assert golden.size == 1 and golden.drafts == 1
    with pytest.raises(ConfigError, match="already exists"):
        drafts_mod.init_command(settings, "2026-12-02")
    assert drafts_mod.init_command(settings, "2026-12-02", overwrite=True)["drafts"] == 1
    with pytest.raises(ConfigError, match="needs params"):
        drafts_mod.init_command(settings, "2026-12-04", from_landing="2026-12-04")
    monkeypatch.setattr(drafts_mod, "published_documents", lambda root: [])
    with pytest.raises(NothingToDo, match="run a refresh first"):
        drafts_mod.init_command(settings, "2026-12-03")


def test_published_documents_leaves_out_tombstoned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import evertune.tuning.dataset as dataset

    rows = {"a-doc": {"doc_id": "a-doc"}, "b-doc": {"doc_id": "b-doc"}}
    monkeypatch.setattr(dataset, "select_interval_dirs", lambda root, end, window: [root / "ds=2026-11-01"])
    monkeypatch.setattr(dataset, "current_documents", lambda dirs: rows)
    monkeypatch.setattr(dataset, "collect_deleted_doc_ids", lambda dirs, docs: {"b-doc"})
    assert drafts_mod.published_documents(tmp_path) == [{"doc_id": "a-doc"}]


def test_kb_golden_init_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from evertune.kb import cli as kb_cli

    calls = []
    monkeypatch.setattr(drafts_mod, "init_command", lambda *a, **kw: calls.append((a[1], kw)) or {"drafts": 2})
    parser = argparse.ArgumentParser()
    kb_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["kb", "golden", "init", "--partition", "2026-12-02", "--per-doc", "2", "--force"])
    assert args.func(args) == 0
    assert calls[0][0] == "2026-12-02" and calls[0][1]["from_landing"] is None
    assert {k: calls[0][1][k] for k in ("per_doc", "seed", "overwrite")} == {"per_doc": 2, "seed": 0, "overwrite": True}
    assert json.loads(capsys.readouterr().out) == {"drafts": 2}


def test_init_from_a_landing_partition(tmp_path: Path, corpus_documents: list[dict]) -> None:
    """A first golden set before any refresh: drafted from the landing partition itself, tombstones left out."""
    import dataclasses

    from evertune.settings import Settings

    landing = tmp_path / "landing"
    shutil.copytree(CORPUS, landing / "ds=2026-12-01")
    (landing / "ds=2026-12-01" / "tombstones.jsonl").write_text(
        '{"doc_id": "glossary", "deleted_at": "2026-12-01T00:00:00+00:00"}\n', encoding="utf-8"
    )
    settings = dataclasses.replace(Settings.from_env(), landing_uri=str(landing), data_repo=tmp_path / "repo")
    result = drafts_mod.init_command(settings, "2026-12-01", from_landing="2026-12-01", params=_corpus_params())
    lines = [json.loads(line) for line in Path(result["path"]).read_text(encoding="utf-8").splitlines()]
    assert result["documents"] == 35 and result["drafts"] == len(lines) and result["documents_without_drafts"] == []
    assert "glossary" not in {doc for line in lines for doc in line["relevant_doc_ids"]}
    live = {d["doc_id"] for d in corpus_documents} - {"glossary"}
    fitted = require_golden(apply_doc_state(fold_golden([("2026-12-01", lines)]), live, {"glossary"}))
    assert fitted.size == len(lines) and fitted.summary()["unreviewed_drafts"] is True

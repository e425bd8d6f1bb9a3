"""The golden sets carried over the validated history: ingest keeps drafts and retire lines, the set as of a day is
folded from every validated day up to it, and tuning freezes it and never trains on any golden item ever dropped."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_contexts import memory_contexts

from evertune.config import load_params
from evertune.data import snapshot
from evertune.kb.golden import QA, RETRIEVAL, NoGoldenSetError, fold_golden
from evertune.kb.golden_carry import carried_golden, log_golden
from evertune.settings import get_settings


def _q(query_id: str, query: str, *docs: str, **extra) -> dict:
    return {"query_id": query_id, "query": query, "relevant_doc_ids": list(docs), **extra}


def _doc(doc_id: str, text: str, day: str) -> dict:
    return {"doc_id": doc_id, "title": doc_id.title(), "text": text, "source": "product-docs",
            "url": f"https://docs.fjordbase.example/{doc_id}", "updated_at": f"{day}T08:00:00+00:00",
            "content_hash": f"{doc_id}-{day}", "metadata": "{}", "record_ref": f"docs/{doc_id}.md"}  # fmt: skip


def _qa(qa_id: str, question: str, answer: str, doc_id: str) -> dict:
    return {"qa_id": qa_id, "question": question, "answer": answer, "doc_id": doc_id, "fact_key": "",
            "record_ref": f"qa.jsonl:{qa_id}"}  # fmt: skip


def _interval(root: Path, day: str, **contents) -> Path:
    folder = root / f"ds={day}"
    snapshot.write(folder, {"documents": [], "tombstones": [], "qa": [], **contents})
    return folder


# --------------------------------------------------------------------------- ingest
def test_ingest_keeps_draft_flags_and_retire_lines(tmp_path: Path) -> None:
    from evertune.kb.ingest import ingest_partition

    golden = tmp_path / "ds=2026-12-01" / "golden"
    golden.mkdir(parents=True)
    (golden / "retrieval.jsonl").write_text(
        "\n".join(json.dumps(line) for line in [
            {"query_id": "g-2", "retire": True, "reason": "merged"}, _q("g-1", "Q?", "doc-a", draft=True),
            {"query_id": "g-0", "retire": True}, _q("g-3", "R?", "doc-a"), {"query_id": "bad", "retire": "yes"},
        ]) + "\n", encoding="utf-8",
    )  # fmt: skip
    (golden / "qa.jsonl").write_text(json.dumps({"qa_id": "qa-1", "retire": True}) + "\n", encoding="utf-8")
    result = ingest_partition(str(tmp_path), "2026-12-01", load_params())
    assert result.golden_retrieval == [
        {"query_id": "g-0", "retire": True, "reason": "retired by drop"},
        {"query_id": "g-1", "query": "Q?", "relevant_doc_ids": ["doc-a"], "draft": True},
        {"query_id": "g-2", "retire": True, "reason": "merged"},
        {"query_id": "g-3", "query": "R?", "relevant_doc_ids": ["doc-a"]},
    ]
    assert result.golden_qa == [{"qa_id": "qa-1", "retire": True, "reason": "retired by drop"}]
    assert result.quarantine["reason"].tolist() == ["invalid_field"]
    # Through the snapshot contract and back: the same lines (what the fold reads from the validated folder).
    snapshot.write(tmp_path / "out", {"golden_retrieval": result.golden_retrieval})
    assert snapshot.read_records(tmp_path / "out", "golden_retrieval") == result.golden_retrieval


# --------------------------------------------------------------------------- the carried set
def test_carried_golden_folds_every_validated_day_up_to_the_interval(tmp_path: Path) -> None:
    root = tmp_path / "validated"
    docs = [_doc(d, f"{d} text", "2026-12-01") for d in ("kms", "wal", "ports")]
    _interval(root, "2026-12-01", documents=docs,
              golden_retrieval=[_q("g-1", "Rotate?", "kms"), _q("g-2", "WAL?", "wal", "ports"), _q("g-3", "X?", "nope")])
    _interval(root, "2026-12-02", tombstones=[{"doc_id": "wal", "deleted_at": "2026-12-02T09:00:00+00:00",
                                                "reason": "", "record_ref": "tombstones.jsonl:1"}])
    _interval(root, "2026-12-03", golden_retrieval=[{"query_id": "g-1", "retire": True, "reason": "merged"}])
    first, second, third = (carried_golden(root, day, RETRIEVAL) for day in ("2026-12-01", "2026-12-02", "2026-12-03"))
    assert first.golden.version == second.golden.version != third.golden.version  # day 2 has no golden file
    assert [i["query_id"] for i in first.fitted.items] == ["g-1", "g-2"]
    assert second.fitted.items[1]["relevant_doc_ids"] == ["ports"] and second.fitted.version != first.fitted.version
    summary = second.summary()
    assert summary["pruned_items"] == [{"id": "g-2", "dropped_doc_ids": ["wal"]}]
    assert summary["quarantined_items"][0]["reason"] == "unknown_document" and summary["interval"] == "2026-12-02"
    assert summary["golden_version"] == second.golden.version and summary["version"] == second.fitted.version
    assert [i["query_id"] for i in third.fitted.items] == ["g-2"] and third.summary()["retired"] == 1
    assert third.seen_ids == {"g-1", "g-2", "g-3"} and "Rotate?" in third.seen_texts
    # Later days never change an earlier day's set.
    assert carried_golden(root, "2026-12-01", RETRIEVAL).fitted.canonical == first.fitted.canonical
    direct = fold_golden([("2026-12-01", snapshot.read_records(root / "ds=2026-12-01", "golden_retrieval"))])
    assert first.golden.canonical == direct.canonical


def test_log_golden_reports_retirements_and_unreviewed_drafts(tmp_path: Path, caplog) -> None:
    root = tmp_path / "validated"
    _interval(root, "2026-12-01", documents=[_doc("kms", "k", "2026-12-01"), _doc("wal", "w", "2026-12-01")],
              golden_retrieval=[_q("g-1", "Rotate?", "kms", draft=True), _q("g-2", "WAL?", "wal")],
              tombstones=[{"doc_id": "wal", "deleted_at": "2026-12-01T09:00:00+00:00", "reason": "",
                           "record_ref": "tombstones.jsonl:1"}])  # fmt: skip
    with caplog.at_level(logging.INFO):
        summary = log_golden(carried_golden(root, "2026-12-01", RETRIEVAL), logging.getLogger("test"))
    assert summary["auto_retired_ids"] == ["g-2"] and summary["unreviewed_drafts"] is True
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("g-2 retired automatically: all_relevant_deleted" in w for w in warnings)
    assert any("1 unreviewed drafts" in w for w in warnings)
    assert any("1 items scored (2 carried)" in r.getMessage() for r in caplog.records)


def test_publish_extra_says_when_the_set_was_not_reviewed(caplog) -> None:
    from evertune.kb.refresh import _golden_extra

    evaluation = {"golden_version": "a" * 64, "golden_sha256": "b" * 64,
                  "golden": {"kind": "retrieval", "size": 3, "drafts": 2, "unreviewed_drafts": True, "misc": 1}}
    with caplog.at_level(logging.WARNING):
        extra = _golden_extra(evaluation)
    assert extra["golden_unreviewed_drafts"] is True and extra["golden_version"] == "a" * 64
    assert extra["golden"] == {"kind": "retrieval", "size": 3, "drafts": 2}
    assert any("2 unreviewed drafts" in r.getMessage() for r in caplog.records)
    caplog.clear()
    assert _golden_extra({"golden": {"drafts": 0}})["golden_unreviewed_drafts"] is False and not caplog.records


# --------------------------------------------------------------------------- tuning
ARTICLE = ("Point-in-time recovery restores a cluster to any second of the last 7 days. The WAL archive keeps 14 "
           "days. Use fjordctl restore --at to pick the moment. Backups run nightly at 02:00. ") * 2


@pytest.fixture
def tuning_history(evertune_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three validated days; the golden QA items come from a day older than a 2-day window, the last has none."""
    from evertune.tuning import steps

    root = get_settings().data_repo / "validated"
    old = [{"qa_id": "g-window", "question": "How far back can I restore a cluster?", "answer": "7 days",
            "doc_id": "pitr", "fact_key": "pitr"},
           {"qa_id": "g-retired", "question": "How long is the WAL archive kept?", "answer": "14 days",
            "doc_id": "pitr", "fact_key": "wal"}]  # fmt: skip
    _interval(root, "2026-10-01", documents=[_doc("pitr", ARTICLE, "2026-10-01")], golden_qa=old)
    _interval(root, "2026-11-09", golden_qa=[{"qa_id": "g-retired", "retire": True, "reason": "reworded"}])
    _interval(root, "2026-11-10", qa=[
        _qa("g-window", "Restore window?", "7 days", "pitr"),  # a golden id, older than the window
        _qa("t-1", "how far back can I restore a cluster", "7 days", "pitr"),  # a golden question, other id
        _qa("t-2", "How long is the WAL archive kept?", "14 days", "pitr"),  # the question of a retired item
        _qa("t-3", "When do backups run?", "Nightly at 02:00.", "pitr"),
        _qa("t-4", "How do I pick the moment to restore?", "Use fjordctl restore --at.", "pitr"),
    ])  # fmt: skip
    monkeypatch.setattr(steps, "resolve_as_of", lambda as_of, settings: as_of)
    # Contexts from an in-memory KB of the article (the LanceDB path: tests/integration/test_warm_start.py).
    monkeypatch.setattr(steps, "_training_contexts", lambda params, settings: memory_contexts(params, {"pitr": ARTICLE}))
    versioned = []
    fake = SimpleNamespace(version_folder=lambda folder, key, message: versioned.append(key) or SimpleNamespace(
        data_version=f"{key}@test", git_rev="0" * 40))  # fmt: skip
    monkeypatch.setattr(steps, "DataRepo", lambda settings: fake)
    return root


def test_build_dataset_freezes_the_carried_set_and_excludes_every_golden_item(tuning_history: Path) -> None:
    from evertune.tuning import steps
    from evertune.tuning.dataset import read_sft_jsonl

    summary = steps.build_dataset("2026-11-10", {"dataset.window_days": 2})
    assert summary["intervals"] == ["2026-11-09", "2026-11-10"]
    ids = {row["id"] for name in ("train.jsonl", "validation.jsonl")
           for row in read_sft_jsonl(Path(summary["path"]) / name)}
    assert ids == {"t-3", "t-4"}  # no golden id, golden question or retired golden question is trained on
    counts = summary["stats"]["counts"]
    assert counts["dropped_golden_id"] == 1 and counts["dropped_golden_question"] == 2
    frozen = snapshot.path_of(summary["path"], "golden_qa")
    expected = carried_golden(tuning_history, "2026-11-10", QA)
    assert frozen.read_bytes() == expected.fitted.canonical and expected.fitted.size == 1
    assert summary["golden_qa"]["golden_version"] == expected.golden.version
    assert summary["golden_qa"]["size"] == 1 and summary["golden_qa"]["retired"] == 1


def test_build_dataset_without_a_golden_qa_set_fails_before_anything_is_written(tuning_history: Path) -> None:
    from evertune.tuning import steps

    for folder in tuning_history.iterdir():
        snapshot.path_of(folder, "golden_qa").unlink(missing_ok=True)
    with pytest.raises(NoGoldenSetError, match="no golden qa set: nothing to evaluate against. To add one, drop "
                                               "golden/qa.jsonl"):
        steps.build_dataset("2026-11-10", {"dataset.window_days": 2})
    assert not (get_settings().data_repo / steps.dataset_folder("2026-11-10")).exists()

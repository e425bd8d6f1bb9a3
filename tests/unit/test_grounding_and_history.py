"""The dataset builder's helpers: the grounding tally (tuning/grounding.py) and the validated history readers
(tuning/history.py), each on its own."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from evertune.config import DatasetParams
from evertune.data import snapshot
from evertune.errors import CriticalValidationError
from evertune.tuning.grounding import SOURCE_MISSING, UNGROUNDED, GroundingCheck, as_text, poisoned_message
from evertune.tuning.history import (
    collect_deleted_doc_ids,
    current_documents,
    interval_of,
    latest_documents,
    read_golden,
)

ARTICLE = {"doc_id": "d1", "title": "Plans", "text": "The Pro plan costs $10 per user per month."}


def test_as_text_turns_missing_cells_into_empty_text() -> None:
    assert (as_text(None), as_text(float("nan")), as_text("x"), as_text(3)) == ("", "", "x", "3")


def test_grounding_check_counts_checked_ungrounded_and_missing_sources() -> None:
    counts: Counter[str] = Counter()
    check = GroundingCheck({"d1": ARTICLE, "empty": {"text": "  "}}, DatasetParams(), counts)
    assert check.passes("q1", "What does Pro cost?", "Pro costs $10 per user per month.", "d1", "ds=2026-11-01")
    assert not check.passes("q2", "What does Pro cost?", "Pro costs $12 per user per month.", "d1", "ds=2026-11-02")
    assert not check.passes("q3", "Q?", "A.", "gone", "ds=2026-11-02")
    assert not check.passes("q4", "Q?", "A.", "empty", "ds=2026-11-02")
    summary = check.summary()
    assert (summary["checked"], summary["ungrounded"], summary["source_missing"]) == (2, 1, 2)
    assert summary["ungrounded_fraction"] == 0.5
    assert summary["by_interval"] == {"ds=2026-11-01": {"checked": 1, "ungrounded": 0},
                                      "ds=2026-11-02": {"checked": 1, "ungrounded": 1}}
    reasons = {row["qa_id"]: row["reason"] for row in summary["excluded"]}
    assert reasons == {"q2": UNGROUNDED, "q3": SOURCE_MISSING, "q4": SOURCE_MISSING}
    assert counts == Counter(dropped_ungrounded=1, dropped_source_missing=2)
    assert list(check.articles) == ["d1"]  # one parsed article per document, reused


def test_poisoned_message_names_examples_and_the_worst_interval() -> None:
    counts: Counter[str] = Counter()
    check = GroundingCheck({"d1": ARTICLE}, DatasetParams(max_ungrounded_fraction=0.1), counts)
    for i in range(7):
        check.passes(f"q{i}", "What does Pro cost?", f"Pro costs ${20 + i} per user.", "d1", "ds=2026-11-06")
    message = poisoned_message(check.summary())
    assert message.startswith("7 of 7 QA rows in the window (100.0%)")
    assert "Examples: q0, q1, q2, q3, q4, ...;" in message and "7 of 7 rows of ds=2026-11-06" in message


def write(folder: Path, **tables: list) -> Path:
    snapshot.write(folder, tables)
    return folder


def doc(doc_id: str, updated_at: str, text: str = "text", content_hash: str = "h") -> dict:
    return {"doc_id": doc_id, "title": "T", "text": text, "source": "s", "url": "u", "updated_at": updated_at,
            "content_hash": content_hash, "metadata": "{}", "record_ref": f"docs/{doc_id}.md"}


def tomb(doc_id: str, deleted_at: str) -> dict:
    return {"doc_id": doc_id, "deleted_at": deleted_at, "reason": "retired", "record_ref": "t:1"}


def test_interval_of_reads_the_date_in_the_name() -> None:
    assert interval_of(Path("/x/ds=2026-11-03")) == "2026-11-03"
    assert interval_of(Path("2026-11-04")) == "2026-11-04"
    assert interval_of(Path("/x/notes")) == "notes"


def test_current_documents_and_deletions_follow_the_doc_state_rule(tmp_path: Path) -> None:
    day1 = write(tmp_path / "ds=2026-11-01", documents=[doc("a", "2026-11-01T08:00:00+00:00", "old"),
                                                        doc("b", "2026-11-01T08:00:00+00:00")])
    day2 = write(tmp_path / "ds=2026-11-02", documents=[doc("a", "2026-11-01T08:00:00+00:00", "same time, later day")],
                 tombstones=[tomb("b", "2026-11-01T08:00:00+00:00"), tomb("c", "2026-11-02T08:00:00+00:00")])
    day3 = write(tmp_path / "ds=2026-11-03", tombstones=[tomb("a", "2026-10-01T00:00:00+00:00")])
    documents = current_documents([day1, day2, day3])
    assert documents["a"]["text"] == "same time, later day" and sorted(documents) == ["a", "b"]
    # b: a tombstone at the document's own timestamp deletes it; c: never a document; a: the tombstone is older.
    assert collect_deleted_doc_ids([day1, day2, day3], documents) == {"b", "c"}


def test_latest_documents_prefers_the_given_rows(tmp_path: Path) -> None:
    folder = write(tmp_path / "ds=2026-11-01", documents=[doc("a", "2026-11-01T08:00:00+00:00", "from file")])
    rows = [doc("a", "2026-11-05T08:00:00Z", "given", "h1"), doc("a", "2026-11-05T08:00:00+00:00", "given 2", "h2")]
    assert latest_documents([folder], None)["a"]["text"] == "from file"
    assert latest_documents([folder], rows)["a"]["text"] == "given 2"  # same time: the larger content hash
    with pytest.raises(CriticalValidationError, match="not an ISO 8601"):
        latest_documents([folder], [doc("a", "soon")])


def test_read_golden_unions_ids_and_normalised_questions(tmp_path: Path) -> None:
    write(tmp_path / "d1", golden_qa=[{"qa_id": "g1", "question": "How do I SHARE?"}])
    write(tmp_path / "d2", golden_qa=[{"qa_id": "g2", "question": ""}])
    ids, questions = read_golden([tmp_path / "d1", tmp_path / "d2", tmp_path / "missing"])
    assert ids == {"g1", "g2"} and questions == {"how do i share"}
    snapshot.path_of(tmp_path / "d2", "golden_qa").write_text(json.dumps({"qa_id": "g3"}) + "\n{bad\n")
    with pytest.raises(CriticalValidationError, match="golden_qa.jsonl:2"):
        read_golden([tmp_path / "d2"])

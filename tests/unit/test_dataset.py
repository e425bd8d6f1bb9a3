"""SFT dataset builder: latest-wins, PII/deletion/golden exclusion, groundedness of answers in their cited
article (and the poisoned-data policy), dedup, stable split, deterministic files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evertune.config import DatasetParams, load_params
from evertune.errors import CriticalValidationError, NothingToDo, PoisonedDataError
from evertune.tuning.dataset import (
    answer_support,
    build_sft_dataset,
    check_grounding,
    collect_deleted_doc_ids,
    current_documents,
    drift_inputs,
    read_sft_jsonl,
    select_interval_dirs,
    split_of,
    write_sft_dataset,
)

PARAMS = DatasetParams(val_fraction=0.3)
#: Article sentences backing the fixture's answers (the builder drops answers their article does not back).
ARTICLES = {
    "d1": "To export your notes, use File > Export. Notes edited offline sync later. Press Share to invite people.",
    "d2": "To change your plan, open Settings > Billing > Plan (or open Billing from the menu). To upgrade, choose "
          "a plan in Billing. Invoices are in Billing > Invoices. Two-factor login asks for a second code at sign-in.",
    "d3": "Deleted notes go to the trash. Use the trash to restore a note, or empty it.",
}


def qa(qa_id: str, question: str, answer: str, doc_id: str, **meta: object) -> dict:
    return {"qa_id": qa_id, "question": question, "answer": answer, "doc_id": doc_id, "fact_key": f"fk-{qa_id}",
            "metadata": json.dumps(meta)}


def doc(doc_id: str, title: str, topic: str, updated_at: str, text: str = "") -> dict:
    text = text or f"{title}. {ARTICLES.get(doc_id, '')} " + "Details about the feature. " * 10
    return {"doc_id": doc_id, "title": title, "text": text,
            "source": "help-center", "url": f"https://help.nimbusnotes.example/{doc_id}", "updated_at": updated_at,
            "content_hash": doc_id, "metadata": json.dumps({"topic": topic}), "record_ref": f"docs/{doc_id}.md"}


def write_interval(folder: Path, qa_rows: list[dict], docs: list[dict] = (), tombstones: list[dict] = (),
                   golden: list[dict] = ()) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(qa_rows), folder / "qa.parquet")
    if docs:
        pq.write_table(pa.Table.from_pylist(list(docs)), folder / "documents.parquet")
    schema = pa.schema([("doc_id", pa.string()), ("deleted_at", pa.string()), ("reason", pa.string())])
    pq.write_table(pa.Table.from_pylist(list(tombstones), schema=schema), folder / "tombstones.parquet")
    (folder / "golden_qa.jsonl").write_text("".join(json.dumps(g) + "\n" for g in golden))
    return folder


@pytest.fixture
def intervals(tmp_path: Path) -> list[Path]:
    return make_intervals(tmp_path)


def make_intervals(tmp_path: Path) -> list[Path]:
    """Three validated days exercising every rule (also the fixture of tests/unit/test_contexts.py)."""
    root = tmp_path / "validated"
    day1 = write_interval(
        root / "ds=2026-11-01",
        [
            qa("q1", "How do I export my notes?", "Use File > Export.", "d1"),
            qa("q2", "How do I change my plan?", "Open Billing.", "d2"),
            qa("q3", "Can I sync offline?", "Yes, changes sync later.", "d1"),
            qa("q4", "What is two-factor login?", "A second code at sign-in.", "d2", topic="security"),
            qa("q5", "How do I restore a deleted note?", "Use the trash.", "d3"),
            qa("q6", "Where is the invoice?", "In Billing > Invoices.", "d2"),
        ],
        docs=[doc("d1", "Exporting notes", "sync", "2026-11-01T08:00:00+00:00"),
              doc("d2", "Plans and pricing", "billing", "2026-11-01T08:00:00+00:00"),
              doc("d3", "Trash and restore", "notes", "2026-11-01T08:00:00+00:00")],
        golden=[{"qa_id": "g1", "question": "How do I share a notebook?", "answer": "Click Share.", "doc_id": "d1",
                 "fact_key": "share"}],
    )
    day2 = write_interval(
        root / "ds=2026-11-02",
        [
            qa("q2", "How do I change my plan?", "Open Settings > Billing > Plan.", "d2"),  # newer answer
            qa("q7", "Who is jane@example.com?", "Jane Doe, +1 555 0100.", "d1", pii=True),
            qa("q8", "how do I export my NOTES", "Use File > Export!", "d1"),  # duplicate of q1 after normalising
            qa("q9", "How do I share a notebook", "Press Share.", "d1"),  # golden question, other id
            qa("q10", "Can I empty the trash?", "Yes.", "d3"),
            qa("g1", "Share?", "Click Share.", "d1"),  # golden id
        ],
        tombstones=[{"doc_id": "d3", "deleted_at": "2026-11-02T09:00:00+00:00", "reason": "retired"}],
    )
    day3 = write_interval(
        root / "ds=2026-11-03",
        [qa("q3", "Can I sync offline?", "Yes; my number is 555-0199.", "d1", pii=True),  # later row is PII
         qa("q11", "How do I upgrade?", "Choose a plan in Billing.", "d2")],
        docs=[doc("d2", "Plans and pricing", "billing", "2026-11-03T08:00:00+00:00")],
        # Older than d2's newest version: must not delete it.
        tombstones=[{"doc_id": "d2", "deleted_at": "2026-11-02T00:00:00+00:00", "reason": "moved"}],
    )
    return [day1, day2, day3]


def all_rows(ds) -> dict[str, dict]:
    return {row["id"]: row for row in ds.train + ds.validation}


def test_build_applies_every_rule(intervals: list[Path]) -> None:
    ds = build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set())
    rows = all_rows(ds)
    # q3: later PII row wins then is dropped; q5/q10: d3 deleted; q7: PII; q8: dup of q1; q9/g1: golden.
    assert sorted(rows) == ["q1", "q11", "q2", "q4", "q6"]
    counts = ds.stats["counts"]
    assert counts["qa_rows_read"] == 14
    assert counts["qa_unique_ids"] == 12  # q1..q11 and g1
    assert counts["dropped_pii"] == 2
    assert counts["dropped_deleted_doc"] == 2
    assert counts["dropped_duplicate"] == 1
    assert counts["dropped_golden_id"] == 1
    assert counts["dropped_golden_question"] == 1
    assert counts["train"] + counts["validation"] == 5
    assert rows["q2"]["messages"][-1] == {"role": "assistant", "content": "Open Settings > Billing > Plan."}
    assert [m["role"] for m in rows["q1"]["messages"]] == ["system", "user", "assistant"]
    assert rows["q1"]["messages"][0]["content"] == PARAMS.system_prompt
    assert rows["q4"]["topic"] == "security"  # from the QA metadata
    assert rows["q6"]["topic"] == "billing"  # from its document
    for split, ids in (("train", ds.train), ("validation", ds.validation)):
        assert all(split_of(row["id"], PARAMS.val_fraction) == split for row in ids)


def test_caller_exclusions_are_applied(intervals: list[Path]) -> None:
    ds = build_sft_dataset(intervals, PARAMS, golden_qa_ids={"q4"}, deleted_doc_ids={"d1"},
                           golden_questions=["HOW DO I CHANGE MY PLAN"])
    # d1 deleted: q1, q3, q8, q9; q4 golden by id; q2 golden by normalised question text.
    assert sorted(all_rows(ds)) == ["q11", "q6"]
    assert ds.stats["counts"]["dropped_golden_question"] == 1


def test_duplicate_keeps_earliest_seen_row(intervals: list[Path]) -> None:
    ds = build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set())
    rows = all_rows(ds)
    assert "q1" in rows and "q8" not in rows
    assert rows["q1"]["messages"][-1]["content"] == "Use File > Export."


def test_nothing_left_raises_nothing_to_do(intervals: list[Path]) -> None:
    with pytest.raises(NothingToDo):
        build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids={"d1", "d2", "d3"})
    with pytest.raises(NothingToDo):
        build_sft_dataset([intervals[0].parent / "missing"], PARAMS, golden_qa_ids=set(), deleted_doc_ids=set())


def test_missing_columns_is_critical(tmp_path: Path) -> None:
    folder = tmp_path / "2026-11-01"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([{"qa_id": "q1", "question": "Q?"}]), folder / "qa.parquet")
    with pytest.raises(CriticalValidationError, match="answer"):
        build_sft_dataset([folder], PARAMS, golden_qa_ids=set(), deleted_doc_ids=set())


def test_split_is_stable_when_rows_are_added(intervals: list[Path]) -> None:
    def splits(folders: list[Path]) -> dict[str, str]:
        ds = build_sft_dataset(folders, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set())
        return {row["id"]: "train" for row in ds.train} | {row["id"]: "validation" for row in ds.validation}

    small, big = splits(intervals[:1]), splits(intervals)
    common = set(small) & set(big)
    assert {small[i] for i in common} == {"train", "validation"}  # both splits are exercised
    assert all(small[i] == big[i] for i in common)


def test_split_fraction_is_close_to_val_fraction() -> None:
    ids = [f"qa-{i:05d}" for i in range(4000)]
    share = sum(split_of(i, 0.1) == "validation" for i in ids) / len(ids)
    assert 0.08 < share < 0.12
    assert [split_of(i, 0.1) for i in ids[:50]] == [split_of(i, 0.1) for i in ids[:50]]


def test_files_are_byte_deterministic(intervals: list[Path], tmp_path: Path) -> None:
    first = write_sft_dataset(build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set()),
                              tmp_path / "a")
    # Same data, rows stored in reverse order inside each parquet file.
    for folder in intervals:
        table = pq.read_table(folder / "qa.parquet")
        pq.write_table(table.take(list(range(table.num_rows - 1, -1, -1))), folder / "qa.parquet")
    second = write_sft_dataset(build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set()),
                               tmp_path / "b")
    assert first.fingerprint == second.fingerprint
    for name in ("train.jsonl", "validation.jsonl", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    again = write_sft_dataset(build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set()),
                              tmp_path / "a")
    assert again.fingerprint == first.fingerprint
    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert stats["intervals"] == ["ds=2026-11-01", "ds=2026-11-02", "ds=2026-11-03"]
    assert str(tmp_path) not in (tmp_path / "a" / "stats.json").read_text()


def test_fingerprint_changes_with_content(intervals: list[Path], tmp_path: Path) -> None:
    base = write_sft_dataset(build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set()),
                             tmp_path / "a")
    other = write_sft_dataset(build_sft_dataset(intervals, PARAMS, golden_qa_ids={"q1"}, deleted_doc_ids=set()),
                              tmp_path / "b")
    assert base.fingerprint != other.fingerprint
    assert len(base.fingerprint) == 64


def test_prompt_completion_format(intervals: list[Path], tmp_path: Path) -> None:
    params = PARAMS.model_copy(update={"format": "prompt_completion"})
    ds = build_sft_dataset(intervals, params, golden_qa_ids=set(), deleted_doc_ids=set())
    row = all_rows(ds)["q2"]
    assert "messages" not in row
    assert row["prompt"].endswith("Question: How do I change my plan?\nAnswer:")
    assert row["completion"] == " Open Settings > Billing > Plan."
    write_sft_dataset(ds, tmp_path / "pc")
    back = read_sft_jsonl(tmp_path / "pc" / "train.jsonl")
    assert back == ds.train


def test_drift_inputs_and_datasets_loading(intervals: list[Path], tmp_path: Path) -> None:
    ds = build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set())
    texts, categories = drift_inputs(ds.train + ds.validation)
    assert len(texts) == len(categories["topic"]) == 5
    assert any("Open Settings > Billing > Plan." in text for text in texts)
    assert PARAMS.system_prompt not in texts[0]
    written = write_sft_dataset(ds, tmp_path / "out")

    from datasets import load_dataset

    loaded = load_dataset("json", data_files=str(written.path / "train.jsonl"), split="train")
    assert loaded.num_rows == len(ds.train)
    assert loaded[0]["messages"][1]["role"] == "user"


def test_select_interval_dirs(tmp_path: Path) -> None:
    for name in ("ds=2026-10-01", "ds=2026-10-31", "2026-11-02", "ds=2026-11-03", "notes", "ds=2026-11-04"):
        (tmp_path / name).mkdir()
    (tmp_path / "ds=2026-11-01.txt").write_text("a file, not a folder")
    chosen = select_interval_dirs(tmp_path, "2026-11-03", window_days=4)
    assert [p.name for p in chosen] == ["ds=2026-10-31", "2026-11-02", "ds=2026-11-03"]
    history = select_interval_dirs(tmp_path, "2026-11-03", window_days=None)
    assert [p.name for p in history] == ["ds=2026-10-01", "ds=2026-10-31", "2026-11-02", "ds=2026-11-03"]


def test_articles_and_tombstones_older_than_the_window_still_count(tmp_path: Path) -> None:
    """What steps.build_dataset does: the window's QA is checked against the whole history's articles."""
    root = tmp_path / "validated"
    write_interval(root / "ds=2026-09-01", [], docs=[doc("d1", "Exporting notes", "sync", "2026-09-01T08:00:00+00:00"),
                                                      doc("d3", "Trash", "notes", "2026-09-01T08:00:00+00:00")])
    write_interval(root / "ds=2026-09-02", [], tombstones=[{"doc_id": "d3", "deleted_at": "2026-09-02T08:00:00+00:00",
                                                            "reason": "retired"}])
    write_interval(root / "ds=2026-11-01", [qa("q1", "How do I export my notes?", "Use File > Export.", "d1"),
                                            qa("q2", "How do I restore a note?", "Use the trash.", "d3")],
                   docs=[doc("d2", "Plans and pricing", "billing", "2026-11-01T08:00:00+00:00")])
    window = select_interval_dirs(root, "2026-11-01", window_days=30)
    assert [p.name for p in window] == ["ds=2026-11-01"]
    # With only the window's articles, neither answer can be checked: nothing would be left to train on.
    with pytest.raises(NothingToDo):
        build_sft_dataset(window, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set())
    history = select_interval_dirs(root, "2026-11-01", window_days=None)
    documents = current_documents(history)
    deleted = collect_deleted_doc_ids(history, documents)
    assert deleted == {"d3"}
    ds = build_sft_dataset(window, PARAMS, golden_qa_ids=set(), deleted_doc_ids=deleted,
                           documents=list(documents.values()))
    assert sorted(all_rows(ds)) == ["q1"]
    assert ds.stats["counts"]["dropped_deleted_doc"] == 1 and not ds.stats["counts"].get("dropped_source_missing")


def test_explicit_documents_decide_topics_and_tombstone_order(intervals: list[Path]) -> None:
    import pandas as pd

    # d3 was republished after its tombstone: its QA comes back; topics now come from these documents.
    documents = pd.DataFrame([doc("d1", "Exporting notes", "export", "2026-11-01T08:00:00+00:00"),
                              doc("d2", "Plans and pricing", "billing", "2026-11-03T08:00:00+00:00"),
                              doc("d3", "Trash and restore", "trash", "2026-11-05T08:00:00Z")])
    ds = build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids=set(), documents=documents)
    rows = all_rows(ds)
    assert {"q5", "q10"} <= set(rows)
    assert rows["q10"]["topic"] == "trash" and rows["q1"]["topic"] == "export"
    # An explicit deletion from the caller still wins.
    ds = build_sft_dataset(intervals, PARAMS, golden_qa_ids=set(), deleted_doc_ids={"d3"}, documents=documents)
    assert not {"q5", "q10"} & set(all_rows(ds))


# -- groundedness of answers in their cited article ------------------------------------------------------------

ARTICLE = (
    "Plans and pricing. The Pro plan costs $10 per user per month, and it includes everything in Free. Passwords "
    "must be at least 12 characters long. SCIM provisioning is supported with Okta, Microsoft Entra ID and "
    "OneLogin. Exports are available in three formats: Markdown, PDF and HTML."
)


@pytest.mark.parametrize(
    ("question", "answer", "article", "grounded", "missing"),
    [
        # Paraphrase: other wording, same value.
        ("What does Pro cost?", "Pro costs $10 per user each month.", ARTICLE, True, ()),
        ("Which formats can I export to?", "You can export as Markdown, PDF and HTML.", ARTICLE, True, ()),
        # Wrong number, even though "12" occurs elsewhere in the article.
        ("What does Pro cost?", "The Pro plan costs $12 per user per month.", ARTICLE, False, ("12",)),
        # Wrong named values.
        ("Which identity providers work with SCIM?", "SCIM provisioning works with JumpCloud and Ping.", ARTICLE,
         False, ("jumpcloud", "ping")),
        # Wrong number word and wrong scope word.
        ("How many export formats are there?", "Exports are available in two formats.", ARTICLE, False, ("two",)),
        ("Which formats can I export to?", "You can export notes as PDF only.", ARTICLE, False, ("only",)),
        # No value at all, and nothing of it in the article.
        ("How do I reset my password?", "Ask your workspace owner to send a reset link.", ARTICLE, False, ()),
        # An empty article backs nothing.
        ("What does Pro cost?", "Pro costs $10 per user per month.", "", False, ("10",)),
        ("What does Pro cost?", "Pro costs $10 per user per month.", "   \n", False, ("10",)),
    ],
)
def test_check_grounding_cases(question: str, answer: str, article: str, grounded: bool, missing: tuple) -> None:
    result = check_grounding(answer, article, question=question, min_support=0.2)
    assert result.grounded is grounded, result
    assert result.missing_values == missing
    assert 0.0 <= result.support <= 1.0


def test_answer_support_scores_words_in_context() -> None:
    assert answer_support("The Pro plan costs $10 per user per month.", ARTICLE) == 1.0
    # Seven of eight claim words (pro plan costs 12 per user per month) are in context; the wrong number alone
    # makes the answer ungrounded.
    wrong = "The Pro plan costs $12 per user per month."
    assert answer_support(wrong, ARTICLE) == pytest.approx(7 / 8)
    assert not check_grounding(wrong, ARTICLE).grounded
    assert answer_support("Pro costs $10 per user per month.", "") == 0.0
    # Words the question already says are not claims: restating the question claims nothing.
    assert answer_support("Yes, Pro.", ARTICLE, question="Is there a Pro plan?") == 1.0
    # The same word elsewhere in the article is not support: it must sit next to the same neighbour.
    assert answer_support("Okta costs extra.", ARTICLE, question="Is SSO free?") == 0.0


def policy_intervals(root: Path) -> list[Path]:
    """Four checked rows, one of them (q4) contradicting its article, and one citing an article not in the window."""
    return [write_interval(
        root / "ds=2026-11-01",
        [qa("q1", "How do I export my notes?", "Use File > Export.", "d1"),
         qa("q2", "How do I upgrade?", "Choose a plan in Billing.", "d2"),
         qa("q3", "Where is the invoice?", "In Billing > Invoices.", "d2"),
         qa("q4", "How much does Pro cost?", "Pro costs $12 per user per month.", "d2"),
         qa("q5", "Can I print notes?", "Use File > Print.", "d9")],
        docs=[doc("d1", "Exporting notes", "sync", "2026-11-01T08:00:00+00:00"),
              doc("d2", "Plans and pricing", "billing", "2026-11-01T08:00:00+00:00",
                  text=ARTICLES["d2"] + " The Pro plan costs $10 per user per month.")],
    )]


def test_ungrounded_rows_below_the_threshold_are_dropped_and_reported(tmp_path: Path) -> None:
    params = PARAMS.model_copy(update={"max_ungrounded_fraction": 0.25})  # 1 of 4 is not above 25 %
    ds = build_sft_dataset(policy_intervals(tmp_path), params, golden_qa_ids=set(), deleted_doc_ids=set())
    assert sorted(all_rows(ds)) == ["q1", "q2", "q3"]
    counts, grounding = ds.stats["counts"], ds.stats["grounding"]
    assert (counts["dropped_ungrounded"], counts["dropped_source_missing"]) == (1, 1)
    # The share's denominator is the checked rows: q5's article is not in the window, so it is not checked.
    assert (grounding["checked"], grounding["ungrounded"], grounding["ungrounded_fraction"]) == (4, 1, 0.25)
    assert grounding["by_interval"] == {"ds=2026-11-01": {"checked": 4, "ungrounded": 1}}
    excluded = {row["qa_id"]: row for row in grounding["excluded"]}
    assert excluded["q4"]["reason"] == "answer_not_grounded" and excluded["q4"]["missing_values"] == ["12"]
    assert excluded["q4"]["doc_id"] == "d2" and excluded["q4"]["interval"] == "ds=2026-11-01"
    assert excluded["q5"]["reason"] == "source_not_in_window"


def test_ungrounded_share_above_the_threshold_rejects_the_dataset(tmp_path: Path) -> None:
    params = PARAMS.model_copy(update={"max_ungrounded_fraction": 0.2})
    with pytest.raises(PoisonedDataError) as info:
        build_sft_dataset(policy_intervals(tmp_path), params, golden_qa_ids=set(), deleted_doc_ids=set())
    message = str(info.value)
    assert "1 of 4 QA rows" in message and "25.0%" in message and "max_ungrounded_fraction=20.0%" in message
    assert "q4" in message
    assert isinstance(info.value, CriticalValidationError)  # fails the task without retries
    assert [row["qa_id"] for row in info.value.report["excluded"] if row["reason"] == "answer_not_grounded"] == ["q4"]


def test_a_stricter_support_threshold_drops_loose_paraphrases(tmp_path: Path) -> None:
    loose = [qa("q1", "How do I export my notes?", "Use File > Export, then pick a format and a folder.", "d1")]
    folder = write_interval(tmp_path / "ds=2026-11-01", loose,
                            docs=[doc("d1", "Exporting notes", "sync", "2026-11-01T08:00:00+00:00")])
    relaxed = PARAMS.model_copy(update={"min_answer_support": 0.2, "max_ungrounded_fraction": 1.0})
    assert "q1" in all_rows(build_sft_dataset([folder], relaxed, golden_qa_ids=set(), deleted_doc_ids=set()))
    strict = relaxed.model_copy(update={"min_answer_support": 0.9})
    with pytest.raises(NothingToDo):  # the only row is dropped as ungrounded, and reported as such
        build_sft_dataset([folder], strict, golden_qa_ids=set(), deleted_doc_ids=set())


def test_demo_poisoned_day_is_flagged_and_good_days_are_not(tmp_path: Path) -> None:
    """The demo generator's days 1-5 have no ungrounded row; day 6's poisoned answers are flagged and rejected."""
    from evertune.demo.generator import generate_range
    from evertune.kb.ingest import ingest_partition

    params = load_params()
    manifests = generate_range(tmp_path / "landing", start_date=params.demo.start_date, days=6,
                               seed=params.demo.seed, n_articles=params.demo.n_articles,
                               max_file_bytes=params.ingest.max_file_bytes)
    folders = []
    for manifest in manifests:  # the validated layout, straight from ingestion
        ingested = ingest_partition(str(tmp_path / "landing"), manifest["date"], params)
        folders.append(write_interval(tmp_path / "validated" / f"ds={manifest['date']}",
                                      ingested.qa.to_dict("records"), ingested.documents.to_dict("records"),
                                      ingested.tombstones.to_dict("records"), ingested.golden_qa))
    for day in range(1, 6):
        ds = build_sft_dataset(folders[:day], params.dataset, golden_qa_ids=set(), deleted_doc_ids=set())
        assert ds.stats["grounding"]["excluded"] == [], f"day {day}: {ds.stats['grounding']['excluded'][:3]}"
        assert ds.stats["grounding"]["checked"] > 0

    poisoned = set(manifests[5]["poisoned_qa_ids"])
    assert manifests[5]["poisoned"] and len(poisoned) >= 20
    with pytest.raises(PoisonedDataError) as info:
        build_sft_dataset(folders, params.dataset, golden_qa_ids=set(), deleted_doc_ids=set())
    report = info.value.report
    flagged = {row["qa_id"] for row in report["excluded"]}
    assert flagged <= poisoned, sorted(flagged - poisoned)  # no good row of days 1-5 is flagged
    assert len(flagged) >= 0.9 * len(poisoned), f"recall {len(flagged)}/{len(poisoned)}"
    assert report["ungrounded_fraction"] > 2 * params.dataset.max_ungrounded_fraction  # not a close call

    # Without the rejection, the same rows are dropped and the good ones trained on.
    lenient = params.dataset.model_copy(update={"max_ungrounded_fraction": 1.0})
    rows = all_rows(build_sft_dataset(folders, lenient, golden_qa_ids=set(), deleted_doc_ids=set()))
    assert not flagged & set(rows)
    assert len(rows) >= 100

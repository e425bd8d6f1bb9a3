"""The parts of the validation step that need no Great Expectations run: the checks, the failure details, the
mapping of failed checks back to rows, the critical drop checks, and the GX result parsing."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from evertune.config import load_params
from evertune.data.snapshot import DOC_COLUMNS, QA_COLUMNS, TOMBSTONE_COLUMNS
from evertune.errors import CriticalValidationError
from evertune.kb import quarantine as q
from evertune.kb.expectations import (
    doc_failure_detail,
    document_checks,
    qa_checks,
    qa_failure_detail,
    safety_codes,
)
from evertune.kb.gx_suite import GX_ROW_KEY, RESULT_FORMAT, _failed_refs
from evertune.kb.ingest import IngestResult
from evertune.kb.quarantine import QUARANTINE_COLUMNS
from evertune.kb.validation import _check_drop, sort_out_documents, sort_out_qa

VPARAMS = load_params().validation


def doc_row(doc_id: str, ref: str, **extra: object) -> dict:
    row = {col: "" for col in DOC_COLUMNS} | {"doc_id": doc_id, "record_ref": ref, "metadata": "{}", "text": "x"}
    return row | extra


def outcome(check: str, *refs: str) -> dict:
    return {"check": check, "failed_refs": set(refs)}


def test_checks_are_in_priority_order_and_end_with_pii() -> None:
    doc_names = [c.check for c in document_checks(VPARAMS)]
    assert doc_names[:2] == ["doc_id_format", "text_not_empty"] and doc_names[-3:] == ["pii_email", "pii_phone",
                                                                                       "pii_card"]
    assert [c.check for c in qa_checks(VPARAMS)][:2] == ["question_not_empty", "answer_not_empty"]
    assert all(c.reason for c in document_checks(VPARAMS) + qa_checks(VPARAMS))


def test_email_check_skips_allowed_domains_and_their_subdomains() -> None:
    def email(text: str, vparams=VPARAMS) -> bool:
        return "email" in safety_codes(text, vparams)[1].split(",")

    assert VPARAMS.pii_allowed_email_domains == ["nimbusnotes.example"]
    assert email("write to jane@example.com")
    assert not email("write to support@nimbusnotes.example or help@eu.nimbusnotes.example")
    assert email("a@nimbusnotes.example.evil.com")
    assert email("support@nimbusnotes.example", VPARAMS.model_copy(update={"pii_allowed_email_domains": []}))


def test_failure_details_never_echo_the_value() -> None:
    row = doc_row("bad", "docs.jsonl:1", text="call 555-123-4567", source="blog", url="http://x")
    reason, detail = doc_failure_detail("pii_phone", row, VPARAMS, 1)
    assert reason == q.PII_DETECTED and "555" not in detail
    assert doc_failure_detail("doc_id_unique", row, VPARAMS, 3) == (
        q.DUPLICATE_DOC_ID, "doc_id 'bad' appears 3 times in this drop with different content")
    assert doc_failure_detail("text_length", row, VPARAMS, 1)[0] == q.TEXT_TOO_SHORT
    assert qa_failure_detail("answer_not_empty", {"doc_id": "d", "qa_id": "q"}) == (q.EMPTY_TEXT, "answer is empty")
    with pytest.raises(ValueError, match="unknown check"):
        qa_failure_detail("nope", {})


def test_sort_out_documents_first_failure_is_the_reason() -> None:
    docs = [doc_row("good", "a"), doc_row("twice", "b"), doc_row("pii", "c")]
    outcomes = [outcome("source_allowed", "b"), outcome("pii_email", "b", "c"), outcome("url_allowed")]
    good, quarantined, flagged = sort_out_documents(docs, outcomes, VPARAMS, "2026-11-03")
    assert [r["doc_id"] for r in good] == ["good"] and flagged == 0
    assert [(r.record_ref, r.reason, r.stage) for r in quarantined] == [
        ("b", q.DISALLOWED_SOURCE, "validate"), ("c", q.PII_DETECTED, "validate")]
    assert "; possible email" in quarantined[0].detail


def test_sort_out_documents_flags_pii_only_rows_when_asked() -> None:
    flag = VPARAMS.model_copy(update={"pii_action": "flag"})
    docs = [doc_row("pii", "c", metadata='{"topic": "x"}'), doc_row("both", "d")]
    outcomes = [outcome("pii_email", "c", "d"), outcome("pii_card", "c"), outcome("url_allowed", "d")]
    good, quarantined, flagged = sort_out_documents(docs, outcomes, flag, "2026-11-03")
    assert flagged == 1 and [r["doc_id"] for r in good] == ["pii"]
    assert json.loads(good[0]["metadata"]) == {"pii": True, "pii_kinds": ["card", "email"], "topic": "x"}
    assert [r.record_ref for r in quarantined] == ["d"]  # PII plus another failure is quarantined


def test_sort_out_qa_always_quarantines_pii() -> None:
    rows = [{"qa_id": "q1", "doc_id": "d", "record_ref": "qa:1"}, {"qa_id": "q2", "doc_id": "d", "record_ref": "qa:2"}]
    good, quarantined = sort_out_qa(rows, [outcome("pii_phone", "qa:2")], "2026-11-03")
    assert [r["qa_id"] for r in good] == ["q1"] and [r.reason for r in quarantined] == [q.PII_DETECTED]


def _ingested(found: bool = True, docs: int = 0, quarantined: int = 0) -> IngestResult:
    def frame(columns: tuple[str, ...], n: int) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series([f"{c}-{i}" for i in range(n)], dtype="str") for c in columns})

    return IngestResult("2026-11-03", found, frame(DOC_COLUMNS, docs), frame(TOMBSTONE_COLUMNS, 0),
                        frame(QA_COLUMNS, 0), frame(QUARANTINE_COLUMNS, quarantined), records_read=docs + quarantined)


def test_check_drop_raises_on_an_empty_or_missing_drop() -> None:
    _check_drop(_ingested(docs=1), "2026-11-03", VPARAMS, {})
    for ingested, why in ((_ingested(found=False), "does not exist"), (_ingested(quarantined=2), "2 records"),
                          (_ingested(), "no documents and no tombstones")):
        report: dict = {}
        with pytest.raises(CriticalValidationError, match=why) as info:
            _check_drop(ingested, "2026-11-03", VPARAMS, report)
        assert info.value.report["status"] == "critical" and "counts" in report
    lenient = VPARAMS.model_copy(update={"require_nonempty_drop": False})
    _check_drop(_ingested(found=False), "2026-11-03", lenient, {})


def test_check_drop_reports_a_wrong_schema() -> None:
    broken = _ingested(docs=1)
    broken.documents = broken.documents.drop(columns=["url"])
    with pytest.raises(CriticalValidationError, match="wrong schema"):
        _check_drop(broken, "2026-11-03", VPARAMS, {})


def test_failed_refs_reads_the_row_key_in_every_shape() -> None:
    assert RESULT_FORMAT["unexpected_index_column_names"] == [GX_ROW_KEY]
    result = {"unexpected_index_list": [{GX_ROW_KEY: "a"}, {GX_ROW_KEY: ["b", "c"]}, {"other": "x"}, "junk"]}
    assert _failed_refs(result) == {"a", "b", "c"}
    assert _failed_refs({}) == set()

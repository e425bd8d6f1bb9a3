"""The text parsers (kb.parsing) and the record parsers (kb.records) of the landing-zone contract, one by one."""

from __future__ import annotations

import pytest

from evertune.kb import quarantine as q
from evertune.kb.parsing import html_to_text, looks_binary, markdown_to_text, normalize_text, parse_front_matter
from evertune.kb.records import (
    Reject,
    check_doc_id,
    content_hash,
    decode_bytes,
    docs_line,
    golden_retrieval_line,
    qa_line,
    string_field,
    to_utc_iso,
    tombstone_line,
)

DOC = {"doc_id": "pro-plan", "title": "Pro\nplan", "text": "Body  text.\r\n\r\n\r\nMore.", "source": "help-center",
       "url": "https://help.nimbusnotes.example/articles/pro-plan", "updated_at": "2026-11-03T09:30:00+01:00"}


def test_normalize_text_collapses_spaces_lines_and_controls():
    assert normalize_text("  a\u00a0\u00a0b \x07c\r\n\r\n\r\n\r\nd  ") == "a b c\n\nd"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC


def test_looks_binary():
    assert looks_binary("a\x00b")
    assert looks_binary("\x01\x02" + "a" * 50)
    assert not looks_binary("plain prose, with a tab\tand a newline\n")


def test_markdown_html_and_front_matter_parsers():
    assert markdown_to_text("## Title ##\n\n**bold** and [link](http://x) `code`") == "Title\n\nbold and link code"
    text, title, meta = html_to_text('<title>T</title><meta name="evertune:Doc_ID" content="x"><p>a<br>b</p>'
                                     "<script>gone()</script>")
    assert (text, title, meta) == ("a\nb", "T", {"doc_id": "x"})
    fields, body = parse_front_matter("---\nKey: 'v'\n# comment\n---\nbody")
    assert (fields, body) == ({"key": "v"}, "body")
    with pytest.raises(ValueError, match="not closed"):
        parse_front_matter("---\nkey: v\n")


def test_to_utc_iso_requires_an_offset():
    assert to_utc_iso("2026-11-03T09:30:00+01:00", "updated_at") == "2026-11-03T08:30:00+00:00"
    for bad in ("2026-11-03T09:30:00", "yesterday"):
        with pytest.raises(Reject) as info:
            to_utc_iso(bad, "updated_at")
        assert info.value.reason == q.INVALID_TIMESTAMP


@pytest.mark.parametrize(("record", "kwargs", "reason"), [
    ({}, {"required": True}, q.MISSING_FIELD),
    ({"f": 3}, {"required": True}, q.INVALID_FIELD),
    ({"f": "\ud800"}, {"required": True}, q.BAD_ENCODING),
    ({"f": "a\x00"}, {"required": True}, q.BINARY_CONTENT),
    ({"f": "  "}, {"required": True}, q.MISSING_FIELD),
])
def test_string_field_rejections(record, kwargs, reason):
    with pytest.raises(Reject) as info:
        string_field(record, "f", **kwargs)
    assert info.value.reason == reason


def test_string_field_accepts_optional_and_empty_when_allowed():
    assert string_field({}, "f", required=False) == ""
    assert string_field({"f": " "}, "f", required=True, allow_empty=True) == " "


def test_check_doc_id_and_decode_bytes():
    assert check_doc_id("pro-plan") == "pro-plan"
    with pytest.raises(Reject) as info:
        check_doc_id("../etc")
    assert (info.value.reason, info.value.doc_id) == (q.INVALID_DOC_ID, "../etc")
    assert decode_bytes("\ufeffcafé".encode()) == "café"
    for data, reason in ((b"a\x00", q.BINARY_CONTENT), (b"\xe9t\xe9", q.BAD_ENCODING)):
        with pytest.raises(Reject) as info:
            decode_bytes(data)
        assert info.value.reason == reason


def test_docs_line_builds_the_normalised_row():
    row = docs_line(DOC, "docs.jsonl:2", "docs.jsonl", 2)
    assert row["title"] == "Pro plan" and row["text"] == "Body text.\n\nMore."
    assert row["updated_at"] == "2026-11-03T08:30:00+00:00" and row["record_ref"] == "docs.jsonl:2"
    assert row["content_hash"] == content_hash("Pro plan", "Body text.\n\nMore.", DOC["source"], DOC["url"])
    assert row["metadata"] == '{"file":"docs.jsonl","format":"jsonl","line":2,"topic":""}'
    with pytest.raises(Reject) as info:
        docs_line({**DOC, "updated_at": "soon"}, "r", "docs.jsonl", 1)
    assert info.value.doc_id == "pro-plan"  # known before the failing field


def test_tombstone_qa_and_golden_lines():
    assert tombstone_line({"doc_id": "a-b", "deleted_at": "2026-11-03T12:00:00Z"}, "t:1") == {
        "doc_id": "a-b", "deleted_at": "2026-11-03T12:00:00+00:00", "reason": "", "record_ref": "t:1"}
    row = qa_line({"qa_id": "qa-1", "question": " Q? ", "answer": "A.", "doc_id": ""}, "qa.jsonl:1")
    assert row == {"qa_id": "qa-1", "question": "Q?", "answer": "A.", "doc_id": "", "fact_key": "",
                   "record_ref": "qa.jsonl:1"}
    with pytest.raises(Reject):
        qa_line({"qa_id": "has space", "question": "Q", "answer": "A", "doc_id": "d"}, "r")
    assert golden_retrieval_line({"query_id": "r1", "query": "q", "relevant_doc_ids": ["b-1", "a-1", "b-1"]},
                                 "g:1") == {"query_id": "r1", "query": "q", "relevant_doc_ids": ["a-1", "b-1"]}
    with pytest.raises(Reject) as info:
        golden_retrieval_line({"query_id": "r1", "query": "q", "relevant_doc_ids": []}, "g:1")
    assert info.value.reason == q.INVALID_FIELD
